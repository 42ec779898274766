"""What the trainer owns and hands to every algorithm alike: the optimizer, the learning-rate schedule,
the loss and one training step, and the evaluation of a model (classification: top-1 and top-5
accuracy on the test set and on any extra test sets)."""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..algorithms.evaluation import predict, recalibrate
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


class Accuracy:
    """Top-1 and top-5 accuracy in percent on the test set and on each extra test set (paper Table 3:
    ImageNet and the three ImageNet-V2 sets), with the BatchNorm choice ``bn_eval`` (§2.6;
    ``recalibrate`` re-estimates the statistics on training batches once, on a copy where the model
    must be left alone).

    ``test`` and each of ``extra`` (name -> function) give a fresh iterable of (x, y) batches. Metrics
    are named ``SET/top1`` and ``SET/top5``, the test set's ``test/top1`` first (:attr:`names`)."""

    def __init__(self, test: Callable[[], Iterable], recal: Callable[[], Iterable], bn_eval: str,
                 device: torch.device, extra: dict[str, Callable[[], Iterable]] | None = None) -> None:
        self.sets = {"test": test, **(extra or {})}
        self.recal, self.bn_eval, self.device = recal, bn_eval, device
        self.names = tuple(f"{s}/{k}" for s in self.sets for k in ("top1", "top5"))

    def _outputs(self, model: nn.Module, own: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.bn_eval == "recalibrate":
            model = model if own else copy.deepcopy(model)
            recalibrate(model, self.recal(), self.device)
        return {s: predict(model, batches(), self.bn_eval, self.device) for s, batches in self.sets.items()}

    def metric(self, model: nn.Module) -> dict[str, float]:
        return self.score(self._outputs(model, own=True))

    def predict(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self._outputs(model, own=False)

    def score(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        scores = {}
        for s, (logits, targets) in outputs.items():
            scores[f"{s}/top1"] = 100.0 * (logits.argmax(1) == targets).double().mean().item()
            scores[f"{s}/top5"] = top_k(logits, targets, 5)
        return scores


def top_k(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Percent of rows whose target is among the ``k`` largest logits (all of them when there are fewer
    than ``k`` classes)."""
    best = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (N, k)
    return 100.0 * (best == targets[:, None]).any(1).double().mean().item()
