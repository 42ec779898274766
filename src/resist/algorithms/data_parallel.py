"""Synchronous data parallel SGD (the paper's §2.4 baseline), bucketed as PyTorch's DDP."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import aggregate
from ..comm import Communicator
from ..comm.codecs import make_codec
from ..config import AlgoConfig
from .base import Algorithm, make_store
from .parts import Part, alignment
from .shared import all_reduce_flats


class DataParallel(Algorithm):
    """Gradients averaged over the ranks after every backward, so parameters stay identical on every
    rank; BatchNorm running statistics, which each rank estimates on its own batches, are averaged at
    the end of each round. Momentum persists (there is no round to restart it at).

    As in DistributedDataParallel, the gradients are views of flat buckets (about ``BUCKET_BYTES`` each,
    parameters in reverse order, roughly the order backward produces them), and a bucket's all-reduce
    starts as soon as backward has produced all of its gradients, overlapping the rest of the backward
    pass; buckets start strictly in order, so every rank issues the same sequence.

    With a codec (``cfg.compress``) every bucket is averaged by a compressed all-reduce after backward
    (gradient compression, as QSGD / 1-bit SGD / top-k SGD), keyed by (seed, round, step, bucket); with
    ``cfg.error_feedback`` what compression took from this rank's gradients is added to its next
    step's (Seide et al. 2014; Karimireddy et al. 2019), one residual per bucket, kept in checkpoints."""

    compressible = True
    syncs_every_step = True
    BUCKET_BYTES = 1 << 20

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int) -> None:
        self.comm = comm
        self.store = make_store(comm, build_model, device, cfg, carry_momentum=True, init_seed=seed)
        self.everyone = tuple(range(comm.world_size))
        self._buckets: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._missing: list[int] = []  # gradients each bucket still waits for in this backward
        self._started: list = []  # pending all-reduces, in bucket order
        self.codec = make_codec(cfg.compress, cfg.keep_fraction, cfg.chunk)
        self.error_feedback, self.seed = cfg.error_feedback, seed
        self._round, self._step = 0, 0
        self._residuals: list[torch.Tensor] = []

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        parts = self.store.all_parts()
        self.store.start(parts, state)
        self.store.bucket("shared", parts)
        self._bucket([p for _, p in self.store.trainable() if p.requires_grad])

    def begin_round(self, round_: int) -> None:
        self._round, self._step = round_, 0

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
            align = alignment(group[0].device)
            flat = torch.zeros(sum(aggregate.span(p, align) for p in group), dtype=group[0].dtype, device=group[0].device)
            for p, view in zip(group, aggregate.views([flat], group, align)):
                p.grad = view
                p.register_post_accumulate_grad_hook(lambda _p, k=k: self._ready(k))
            self._buckets.append(flat)
        self._sizes = [len(g) for g in groups]
        self._missing = list(self._sizes)
        if self.error_feedback:
            self._residuals = [torch.zeros_like(b) for b in self._buckets]

    def _ready(self, k: int) -> None:
        if self.codec is not None:  # compressed buckets are reduced after backward
            return
        self._missing[k] -= 1
        # Start every bucket that is complete and whose predecessors have started: the same order on
        # every rank whatever order backward finishes them in.
        while len(self._started) < len(self._buckets) and self._missing[len(self._started)] == 0:
            self._started.append(self.comm.all_reduce_async(self._buckets[len(self._started)], average=True))

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.codec is not None:
            self._reduce_compressed()
            return
        for k in range(len(self._started), len(self._buckets)):  # parameters backward did not reach
            self._started.append(self.comm.all_reduce_async(self._buckets[k], average=True))
        for pending in self._started:
            pending.wait()
        self._started = []
        self._missing = list(self._sizes)

    def _reduce_compressed(self) -> None:
        for k, bucket in enumerate(self._buckets):
            key = (self.seed, self._round, self._step, k)
            if self.error_feedback:
                bucket += self._residuals[k]
            self.comm.all_reduce_coded(bucket, self.codec, bucket.numel(), key,
                                       self._residuals[k] if self.error_feedback else None)
        self._step += 1

    def rank_state(self) -> dict[str, torch.Tensor]:
        return {f"residual_{k}": r for k, r in enumerate(self._residuals)}

    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        for k, r in enumerate(self._residuals):
            r.copy_(state[f"residual_{k}"])

    @torch.no_grad()
    def end_round(self, round_: int, final: bool = False) -> None:
        buffers = [b for b in self.store.model.buffers() if not b.is_meta]
        flats = aggregate.pack(buffers)
        all_reduce_flats(self.comm, flats)
        aggregate.unpack(flats, buffers)

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return {b: self.everyone for b in self.store.candidates}
