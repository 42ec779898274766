"""The classification task's evaluator: top-1 and top-5 accuracy of the assembled model on the test set
and on any extra test sets, with the BatchNorm choice of §2.6."""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
from torch import nn

from .evaluation import predict, recalibrate


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
