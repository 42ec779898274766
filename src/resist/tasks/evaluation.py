"""Test accuracy of a whole network, with the three BatchNorm choices (§2.6 and the paper's code: running statistics, test-batch statistics, recalibration)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
from torch import nn


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def test_batch_statistics(model: nn.Module) -> Iterator[None]:
    """Normalize with each test batch's own statistics, leaving the running ones untouched (the
    paper's code evaluates this way)."""
    bns = _batchnorms(model)
    saved = [(bn.training, bn.track_running_stats) for bn in bns]
    for bn in bns:
        bn.train()
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn, (training, track) in zip(bns, saved):
            bn.train(training)
            bn.track_running_stats = track


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device) -> None:
    """Re-estimate BatchNorm running statistics of the assembled model from training batches
    (cumulative average, not an exponential one)."""
    bns = _batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x, _ in batches:
        model(x.to(device))
    for bn, m in zip(bns, momenta):
        bn.momentum = m


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], bn_eval: str,
            device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over ``batches`` (float32 on CPU)."""
    model.eval()
    logits, labels = [], []
    ctx = test_batch_statistics(model) if bn_eval == "batch" else contextlib.nullcontext()
    with ctx:
        for x, y in batches:
            logits.append(model(x.to(device)).float().cpu())
            labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, batches: Iterable, bn_eval: str,
             train_batches: Callable[[], Iterable], device) -> float:
    """Top-1 test accuracy in percent."""
    if bn_eval == "recalibrate":
        recalibrate(model, train_batches(), device)
    logits, labels = predict(model, batches, bn_eval, device)
    return 100.0 * (logits.argmax(1) == labels).double().mean().item()
