"""Shallow ensembles (paper Appendix A.2, Table 7): the first round's sub-ResNets trained independently."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..comm import Communicator
from ..config import AlgoConfig
from ..io import atomic_save
from ..plan import make_plan
from ..seeds import mix
from .base import Algorithm, Evaluator, make_store
from .parts import Part
from .routing import holding


class Ensemble(Algorithm):
    """Each rank trains the sub-ResNet of the first round's plan on its own shard, from an
    initialization of its own, with no communication; at evaluation the members' logits are averaged
    (one all-reduce). The members are not one global model, so ensemble runs write no checkpoints."""

    checkpointable = False
    partitions = True
    classification_only = True

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int) -> None:
        self.comm = comm
        # Independently trained members start independently: a seed of each member's own.
        self.store = make_store(comm, build_model, device, cfg, cfg.carry_momentum,
                                mix(0xE45E, seed, comm.rank) % 2**32)
        plan = make_plan(seed, 0, comm.world_size, self.store.candidates, cfg.min_depth)
        self.holding = holding(plan)

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        store = self.store
        mine = [b for b in store.candidates if self.comm.rank in self.holding[b]]
        store.start(store.shared_parts + mine, state)
        store.bucket("shared", store.shared_parts)
        for b in mine:
            store.bucket(b, [b])
        store.model.skip = frozenset(b for b in store.candidates if b not in mine)

    def begin_round(self, round_: int) -> None:
        pass

    def end_round(self, round_: int, final: bool = False) -> None:
        pass

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return self.holding

    def evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        """Collective: the scores of the members' averaged outputs, on every rank (every rank holds the
        test sets, in the same order)."""
        outputs = evaluator.predict(self.store.model)
        with self.comm.tag("eval"):
            for logits, _ in outputs.values():
                self.comm.all_reduce(logits, average=True)
        return evaluator.score(outputs)

    def save_final(self, out_dir: Path) -> None:
        """Each member's own weights: ``member{rank}.pt`` holds the state dict of the parts it has
        (the registry's model loads it with ``strict=False``) and the blocks it skips."""
        state = {k: v for k, v in self.store.model.state_dict().items() if not v.is_meta}
        atomic_save({"state_dict": state, "skip": sorted(self.store.model.skip)},
                    Path(out_dir) / f"member{self.comm.rank}.pt")
