"""Local SGD (Lin et al. 2018; the paper's main baseline, §2.4)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..comm import Communicator
from ..config import AlgoConfig
from .base import Algorithm, make_store
from .parts import Part, all_reduce_flats


class LocalSGD(Algorithm):
    """Every rank trains the whole network; every ``local_iters`` steps all parameters and BatchNorm
    buffers (and carried momentum) are averaged, as one all-reduce per dtype of one flat buffer. Same
    data order, seeds, schedule and momentum policy as ResIST."""

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int, warmup_rounds: int = 0) -> None:
        self.comm = comm
        self.store = make_store(comm, build_model, device, cfg, cfg.carry_momentum, seed)
        self.everyone = tuple(range(comm.world_size))

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        parts = self.store.all_parts()
        self.store.start(parts, state)
        self.store.bucket("shared", parts)  # nothing ever moves: one bucket for the whole model

    def begin_round(self, round_: int) -> None:
        pass

    @torch.no_grad()
    def end_round(self, round_: int, final: bool = False) -> None:
        all_reduce_flats(self.comm, self.store.flats["shared"])

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return {b: self.everyone for b in self.store.candidates}
