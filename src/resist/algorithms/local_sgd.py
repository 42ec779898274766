"""Baselines on the same machinery as ResIST (SPEC §5): local SGD and data parallel."""

from __future__ import annotations

import torch

from .. import aggregate
from .resist import ResIST


class LocalSGD(ResIST):
    """Local SGD (Lin et al. 2018; the paper's main baseline): every rank trains the whole network and
    all parameters and BatchNorm buffers are averaged every ``local_iters`` steps, as one all-reduce
    per dtype. Same data order, seeds, schedule and momentum policy as ResIST."""

    one_bucket = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.c = 1.0  # nothing is partitioned, so nothing is scaled

    def full_round(self, round_: int) -> bool:
        return True


class DataParallel(LocalSGD):
    """Synchronous data parallel SGD: gradients all-reduced (one flat buffer) after every backward.

    Parameters therefore stay identical on every rank; BatchNorm running statistics, which each rank
    estimates on its own batches, are averaged at the end of each round. The optimizer state persists
    (there is no round to restart it at)."""

    restarts_optimizer = False

    @torch.no_grad()
    def after_backward(self) -> None:
        params = [p for p in self.model.parameters() if not p.is_meta]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flats = aggregate.pack(grads)
        for f in flats:
            self.comm.all_reduce(f, average=True)
        aggregate.unpack(flats, grads)
        for p, g in zip(params, grads):
            p.grad = g

    @torch.no_grad()
    def end_round(self, round_: int) -> None:
        buffers = [b for b in self.model.buffers() if not b.is_meta]
        flats = aggregate.pack(buffers)
        for f in flats:
            self.comm.all_reduce(f, average=True)
        aggregate.unpack(flats, buffers)
        self.round = round_ + 1
