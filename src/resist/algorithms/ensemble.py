"""Shallow ensembles (paper Table 7): the round-0 sub-ResNets trained independently, never synced."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..io import atomic_save
from ..seeds import mix
from .base import Part
from .evaluation import predict, recalibrate
from .resist import ResIST


class Ensemble(ResIST):
    """Each rank trains the sub-ResNet of the first round's plan on its own shard, with no
    communication; at evaluation the members' logits are averaged (one all-reduce). The members are
    not one global model, so ensemble runs write no checkpoints."""

    checkpointable = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Independently trained members start independently (Table 7): a seed of each member's own.
        self.init_seed = mix(0xE45E, self.cfg.run.seed, self.comm.rank) % 2**32

    def holders(self, round_: int) -> dict[Part, tuple[int, ...]]:
        return super().holders(self.warmup_rounds)  # the first plan, for ever

    def full_round(self, round_: int) -> bool:
        return False

    def end_round(self, round_: int, final: bool = False) -> None:
        self.round = round_ + 1

    def evaluate(self, test_batches: Callable[[], Iterable], train_batches: Callable[[], Iterable]) -> float:
        bn_eval = self.cfg.algo.bn_eval
        model = self.model
        if bn_eval == "recalibrate":  # on a copy: training goes on with the member's own statistics
            model = copy.deepcopy(self.model)
            recalibrate(model, train_batches(), self.device)
        logits, labels = predict(model, test_batches(), bn_eval, self.device)
        with self.comm.tag("eval"):
            self.comm.all_reduce(logits, average=True)
        return 100.0 * (logits.argmax(1) == labels).double().mean().item()

    def save_final(self, out_dir: Path) -> None:
        """Each member's own weights: ``member{rank}.pt`` holds the state dict of the parts it has
        (the registry's model loads it with ``strict=False``) and the blocks it skips."""
        state = {k: v for k, v in self.model.state_dict().items() if not v.is_meta}
        atomic_save({"state_dict": state, "skip": sorted(self.model.skip)}, Path(out_dir) / f"member{self.comm.rank}.pt")
