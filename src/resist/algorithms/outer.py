"""The outer optimizer: DiLoCo's outer SGD (Douillard et al. 2023, https://arxiv.org/abs/2311.08105,
Algorithm 1) on the parameters averaged at the end of a round.

Not ``torch.optim.SGD`` stepping the round-start weights with the pseudo-gradient (as torchft's DiLoCo
does), although the arithmetic is the same: that optimizer's ``grad.add(buf, alpha=momentum)`` (the
Nesterov look-ahead) and ``param.add_(grad, alpha=-lr)`` are fused multiply-adds on the CPU (one rounding;
torch 2.13, AVX512), where this step rounds the product, then the sum. Its momentum buffer comes out
bit for bit the same (``mul_`` then ``add_`` with alpha 1), the new weights do not: on 10^6 values of
order 1 with lr 0.7 and momentum 0.9, 2.8% (Nesterov) / 1.6% (plain) of them differ, by at most 4.8e-7.
In the library, with ``torch.optim.SGD`` in this step's place, 68 of the 102 final tensors of
``tests/unit/test_reference.py``'s Nesterov cases differ from its reference (by at most 4.8e-7), which
pins them bit for bit; its plain case is equal only because its lr, 0.5, makes the product exact (with
lr 0.7, 81 of 102 differ). So the step stays as it was.
"""

from __future__ import annotations

from typing import Iterable

import torch


class OuterSGD:
    """SGD with momentum (Nesterov's, or plain) whose gradient is the pseudo-gradient g = start - now,
    the change a round made, undone: m <- momentum m + g; now <- start - lr (g + momentum m) with
    Nesterov, else start - lr m. The momenta and round-start copies are the part store's (they travel
    and are checkpointed with their part); this class is only the step.

    The step is affine in the parameters, so applying it to each holder's own copy and then averaging
    the copies (and their outer momenta) equals averaging first and stepping once."""

    def __init__(self, lr: float, momentum: float, nesterov: bool) -> None:
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov

    @torch.no_grad()
    def step(self, params: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """Step each ``(now, start, momentum)`` in place (``now`` and ``momentum``)."""
        lr, mu = self.lr, self.momentum
        for p, start, m in params:
            g = start - p
            m.mul_(mu).add_(g)
            p.copy_(start - lr * (g + mu * m if self.nesterov else m))
