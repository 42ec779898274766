"""What the trainer owns and hands to every algorithm alike: the optimizer, the learning-rate schedule,
the loss and one training step, and the evaluation of a model (classification: top-1 and top-5
accuracy on the test set and on any extra test sets)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.parts import PartStore
from ..config import OptimConfig


def make_optimizer(store: PartStore, o: OptimConfig) -> torch.optim.Optimizer:
    """The inner optimizer over the parameters this rank holds now: SGD, or AdamW (whose moments, like
    momentum, restart with the round). Where SGD's momentum persists across rounds it lives in the part
    store (it travels with its part), and the optimizer updates those tensors in place."""
    named = store.trainable()
    if o.inner == "adamw":
        return torch.optim.AdamW([p for _, p in named], lr=o.lr, weight_decay=o.weight_decay)
    opt = torch.optim.SGD([p for _, p in named], lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if store.carry and o.momentum > 0:
        # SGD's first step from a zero buffer equals its first step from none, so carried momentum
        # starts as zeros.
        for n, p in named:
            opt.state[p]["momentum_buffer"] = store.momentum[n]
    return opt


def add_parameters(opt: torch.optim.Optimizer, store: PartStore, named: list[tuple[str, torch.nn.Parameter]],
                   o: OptimConfig) -> None:
    """Parameters that join the round's training mid-round (ResIST's overlap: blocks that arrive at step
    tau) become a parameter group of ``opt`` with the optimizer's defaults: their state starts fresh, or
    from their carried momentum, as :func:`make_optimizer` starts it."""
    opt.add_param_group({"params": [p for _, p in named]})
    if o.inner == "sgd" and store.carry and o.momentum > 0:
        for n, p in named:
            opt.state[p]["momentum_buffer"] = store.momentum[n]


def lr_at(o: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of ``step`` (0-based) of ``total_steps``.

    A linear warm-up over the first ``lr_warmup_epochs`` (lr (k + 1) / W at step k < W), then step decay
    (divided by 10 at each fraction in ``lr_decay_at`` of the training, paper §5) or a cosine from lr to 0
    over the steps after the warm-up (Loshchilov & Hutter 2017). Warm-up and decay are fractions of the
    training, so a resume with another worker count (other steps per epoch) keeps them at the same epochs."""
    warmup = math.ceil(o.lr_warmup_epochs / o.epochs * total_steps)
    if step < warmup:
        return o.lr * (step + 1) / warmup
    if o.lr_schedule == "cosine":
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
    passed = sum(step >= math.ceil(f * total_steps) for f in o.lr_decay_at)
    return o.lr * 0.1**passed


class Precision:
    """Autocast for the forward pass (``amp``: none, bf16, fp16) and, for fp16, a gradient scaler that
    starts afresh with every round (:meth:`new_round`), so that a checkpoint at a round boundary needs
    none of its state. Parameters, gradients and optimizer state stay fp32."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.device = device
        self.dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler: torch.amp.GradScaler | None = None

    def new_round(self) -> None:
        if self.dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


FP32 = Precision("none", torch.device("cpu"))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y, lr: float,
               after_backward: Callable[[], None], precision: Precision = FP32,
               loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] = F.cross_entropy) -> torch.Tensor:
    """One optimizer step of this rank's (sub-)network on its batch; returns the loss (``loss_fn``, the
    task's: cross-entropy for classification).

    Gradients are zeroed, not freed, so that an algorithm may keep them as views of its own buffers
    (data parallel's buckets); a zeroed gradient plus the new one is the new one, bit for bit. Data
    parallel averages scaled fp16 gradients, so every rank sees the same overflow and skips the same steps."""
    for g in opt.param_groups:
        g["lr"] = lr
    model.train()
    with precision.autocast():
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=False)
    scaler = precision.scaler
    if scaler is None:
        loss.backward()
        after_backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        after_backward()
        scaler.step(opt)
        scaler.update()
    return loss.detach()
