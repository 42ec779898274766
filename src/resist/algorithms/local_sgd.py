"""Baselines on the same machinery as ResIST (paper §2.4): local SGD and data parallel."""

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
    """Synchronous data parallel SGD: gradients averaged over the ranks after every backward.

    Parameters therefore stay identical on every rank; BatchNorm running statistics, which each rank
    estimates on its own batches, are averaged at the end of each round. The optimizer state persists
    (there is no round to restart it at).

    As in PyTorch's DistributedDataParallel, the gradients are views of flat buckets (about
    ``BUCKET_BYTES`` each, parameters in reverse order, roughly the order backward produces them), and a
    bucket's all-reduce starts as soon as backward has produced all of its gradients, overlapping the
    rest of the backward pass; buckets start strictly in order, so every rank issues the same sequence."""

    restarts_optimizer = False
    grads_in_place = True
    BUCKET_BYTES = 1 << 20

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._grad_ids: list[int] = []
        self._buckets: list[torch.Tensor] = []
        self._missing: list[int] = []  # gradients each bucket still waits for in this backward
        self._started: list = []  # Pending all-reduces, in bucket order

    def begin_round(self, round_: int) -> None:
        super().begin_round(round_)
        params = [p for p in self.model.parameters() if not p.is_meta and p.requires_grad]
        if [id(p) for p in params] != self._grad_ids:
            self._bucket(params)

    def _bucket(self, params: list[torch.Tensor]) -> None:
        groups: list[list[torch.Tensor]] = []
        size = 0
        for p in reversed(params):
            nbytes = p.numel() * p.element_size()
            if not groups or size + nbytes > self.BUCKET_BYTES or groups[-1][0].dtype != p.dtype:
                groups.append([])
                size = 0
            groups[-1].append(p)
            size += nbytes
        self._buckets = []
        for k, group in enumerate(groups):
            flat = torch.zeros(sum(p.numel() for p in group), dtype=group[0].dtype, device=group[0].device)
            for p, view in zip(group, aggregate.views([flat], group)):
                p.grad = view
                p.register_post_accumulate_grad_hook(lambda _p, k=k: self._ready(k))
            self._buckets.append(flat)
        self._sizes = [len(g) for g in groups]
        self._missing = list(self._sizes)
        self._grad_ids = [id(p) for p in params]

    def _ready(self, k: int) -> None:
        self._missing[k] -= 1
        # Start every bucket that is complete and whose predecessors have started: the same order on
        # every rank whatever order backward finishes them in.
        while len(self._started) < len(self._buckets) and self._missing[len(self._started)] == 0:
            self._started.append(self.comm.all_reduce_async(self._buckets[len(self._started)], average=True))

    @torch.no_grad()
    def after_backward(self) -> None:
        for k in range(len(self._started), len(self._buckets)):  # parameters backward did not reach
            self._started.append(self.comm.all_reduce_async(self._buckets[k], average=True))
        for pending in self._started:
            pending.wait()
        self._started = []
        self._missing = list(self._sizes)

    @torch.no_grad()
    def end_round(self, round_: int, final: bool = False) -> None:
        buffers = [b for b in self.model.buffers() if not b.is_meta]
        flats = aggregate.pack(buffers)
        for f in flats:
            self.comm.all_reduce(f, average=True)
        aggregate.unpack(flats, buffers)
        self.round = round_ + 1
