"""ResIST (Dun et al., Algorithm 1): train shallow sub-ResNets independently, average, repartition.

Each round every rank trains its sub-ResNet (the shared layers plus the partitioned blocks the plan
deals it) for ``local_iters`` steps. Then, decentralized (§2.5, Fig. 3): layers everybody holds are
all-reduced as one flat buffer per dtype, and each partitioned block goes straight from this round's
holders to next round's holders in one batched point-to-point exchange; a receiver averages the
holders' copies in rank order. A block kept by the same single holder moves nothing. BatchNorm running
statistics (and carried momentum) travel with their block.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import aggregate
from ..plan import Plan, eval_scale, make_plan
from .base import Part, Worker


class ResIST(Worker):
    #: Keep every part in the one "shared" bucket (for algorithms in which nothing ever moves).
    one_bucket = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        a = self.cfg.algo
        self.everyone = tuple(range(self.comm.world_size))
        self.c = eval_scale(self.comm.world_size, len(self.candidates), a.min_depth) if a.scale_activations else 1.0
        self.warmup_rounds = math.ceil(a.warmup_epochs * self.steps_per_epoch / a.local_iters)
        self._plan = lru_cache(maxsize=4)(self._make_plan)
        self.round = 0
        self.holding: dict[Part, tuple[int, ...]] = {}  # who holds each block now, between rounds

    # --- who holds what -------------------------------------------------------------------------
    def _make_plan(self, round_: int) -> Plan:
        return make_plan(self.cfg.run.seed, round_, self.comm.world_size, self.candidates, self.cfg.algo.min_depth)

    def full_round(self, round_: int) -> bool:
        """Rounds in which every rank trains the whole network (local-SGD warm-up, §2.6)."""
        return round_ < self.warmup_rounds

    def holders(self, round_: int) -> dict[Part, tuple[int, ...]]:
        if self.full_round(round_):
            return {b: self.everyone for b in self.candidates}
        plan = self._plan(round_)
        return {b: plan.holders(b) for b in self.candidates}

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return self.holding

    def train_scale(self, round_: int) -> float:
        """Residual multiplier while training: 1 for a sub-ResNet, c for the whole network (§2.6)."""
        return self.c if self.full_round(round_) else 1.0

    def eval_scale(self) -> float:
        return self.c

    # --- the round ------------------------------------------------------------------------------
    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        self.round = round_
        holders = self.holding = self.holders(round_)
        parts = self.shared_parts + [b for b in self.candidates if self.comm.rank in holders[b]]
        for part in parts:
            self.materialize(part, init=state is None)
            if state is not None:
                self.load_part(part, state)
        if self.one_bucket:
            self.bucket("shared", parts)
        else:
            self.bucket("shared", self.shared_parts)
            for b in parts[len(self.shared_parts):]:
                self.bucket(b, [b])

    def begin_round(self, round_: int) -> None:
        assert round_ == self.round, f"rank {self.comm.rank} is at round {self.round}, asked for {round_}"
        holders = self.holders(round_)
        self.model.skip = frozenset(b for b in self.candidates if self.comm.rank not in holders[b])
        self.model.set_residual_scale(self.candidates, self.train_scale(round_))
        super().begin_round(round_)

    def end_round(self, round_: int, final: bool = False) -> None:
        """Average and repartition. After the ``final`` round no block goes to the holders of a round
        that never runs: each is only averaged over its current holders (nothing moves for a block
        with one holder)."""
        cur = self.holders(round_)
        nxt = cur if final else self.holders(round_ + 1)
        self.synchronize(cur, nxt)
        self.holding = nxt
        self.round = round_ + 1

    @torch.no_grad()
    def synchronize(self, cur: dict[Part, tuple[int, ...]], nxt: dict[Part, tuple[int, ...]]) -> None:
        """Average every part over its holders of this round and deliver it to next round's holders.

        The flat buffers travel as they are: the all-reduce runs in place, a block with one holder is
        received straight into its new holder's buffer, and only a block with several holders needs
        receive buffers and an average.
        """
        comm, me = self.comm, self.comm.rank
        for key in ["shared"] + [b for b in self.candidates if cur[b] == self.everyone and b in self.flats]:
            for f in self.flats[key]:
                comm.all_reduce(f, average=True)

        sends, recvs, pending = [], [], []
        for b in self.candidates:
            held_by, goes_to = cur[b], nxt[b]
            if held_by == self.everyone:
                continue  # averaged by the all-reduce above
            if me in held_by:
                sends += [(dst, f) for dst in goes_to if dst != me for f in self.flats[b]]
            if me in goes_to and held_by != (me,):  # a sole holder's own copy is already the average
                if not self.held(b):
                    self.bucket(b, [b], fresh=True)  # allocated here, filled by the exchange below
                if len(held_by) == 1:
                    recvs += [(held_by[0], f) for f in self.flats[b]]
                    continue
                bufs = {h: [torch.empty_like(f) for f in self.flats[b]] for h in held_by if h != me}
                recvs += [(h, f) for h, fs in bufs.items() for f in fs]
                pending.append((b, [self.flats[b] if h == me else bufs[h] for h in held_by]))
        comm.exchange(sends, recvs)

        for b, copies in pending:
            for i, target in enumerate(self.flats[b]):
                target.copy_(aggregate.mean([c[i] for c in copies]))
        for b in self.candidates:
            if me not in nxt[b] and self.held(b):
                self.release(b)
