"""Local SGD (Lin et al. 2018; the paper's main baseline, §2.4)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..comm import Communicator
from ..config import AlgoConfig
from .base import Algorithm, make_store
from .parts import Part
from .shared import SharedSync


class LocalSGD(Algorithm):
    """Every rank trains the whole network; every ``local_iters`` steps all parameters and BatchNorm
    buffers (and carried momentum) are averaged, as one all-reduce per dtype of one flat buffer. Same
    data order, seeds, schedule and momentum policy as ResIST.

    With an outer optimizer (``cfg.outer``) this is DiLoCo (Douillard et al. 2023,
    https://arxiv.org/abs/2311.08105): every rank then steps the averaged parameters identically, so the
    outer momentum never travels."""

    supports_outer = True
    compressible = True
    defers_bn_sync = True
    elastic = True

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int) -> None:
        self.comm, self.cfg, self.seed = comm, cfg, seed
        self.store = make_store(comm, build_model, device, cfg, cfg.carry_momentum, seed, outer=cfg.outer)
        self.sync = SharedSync(self.store, cfg, seed)
        self.everyone = tuple(range(comm.world_size))

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        parts = self.store.all_parts()
        self.store.start(parts, state)
        self.store.bucket("shared", parts, outer=False)  # nothing ever moves: one bucket for the whole model

    def reconfigure(self, comm: Communicator) -> None:
        """Go on over another membership (elastic training)."""
        self.comm, self.everyone = comm, tuple(range(comm.world_size))

    def join(self) -> None:
        """A worker joining a run in progress: the whole model as zeros, so that its share of the
        all-reduce adds nothing and it ends with the others' average (whole-model recovery)."""
        parts = self.store.all_parts()
        for part in parts:  # allocated, not initialized: no seeded (global-RNG) draw
            self.store.materialize(part, init=False)
        self.store.bucket("shared", parts, outer=False)
        for f in self.store.flats["shared"]:
            f.zero_()

    def begin_round(self, round_: int) -> None:
        self.sync.begin_round()

    @torch.no_grad()
    def end_round(self, round_: int, final: bool = False) -> None:
        self.sync.all_reduce(self.comm, round_)
        if self.sync.outer is not None:
            self.sync.outer_step(self.store.all_parts())

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return {b: self.everyone for b in self.store.candidates}
