"""ResIST (Dun et al., Algorithm 1): train shallow sub-ResNets independently, average, repartition.

Each round every rank trains its sub-ResNet (the shared layers plus the partitioned blocks the plan
deals it) for ``local_iters`` steps. Then, decentralized (§2.5, Fig. 3): layers everybody holds are
all-reduced as one flat buffer per dtype, and each partitioned block goes straight from this round's
holders to next round's holders in one batched point-to-point exchange; a receiver averages the
holders' copies in rank order. A block kept by the same single holder moves nothing. BatchNorm running
statistics (and carried momentum) travel with their block. An optional warm-up (§2.6) first trains the
whole network, its partitioned branches scaled by c, as local SGD; an optional cool-down (ours, not the
paper's) ends training the same way, with c folded into the weights that end each branch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from .. import aggregate
from ..comm import Communicator
from ..config import AlgoConfig
from ..models.protocol import can_fold, fold_residual_scale
from ..plan import Plan, eval_scale, make_balanced_plan, make_plan, relative_speeds, update_speeds
from .base import Algorithm, make_store
from .parts import Part
from .shared import SharedSync, all_reduce_flats


class ResIST(Algorithm):
    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int, warmup_rounds: int = 0, cooldown_from: int | None = None) -> None:
        self.comm, self.cfg, self.seed, self.warmup_rounds = comm, cfg, seed, warmup_rounds
        self.cooldown_from = cooldown_from  # first round of the cool-down (None: none)
        self.store = make_store(comm, build_model, device, cfg, cfg.carry_momentum, seed, outer=cfg.outer)
        self.everyone = tuple(range(comm.world_size))
        n = len(self.store.candidates)
        self.c = eval_scale(comm.world_size, n, cfg.min_depth) if cfg.scale_activations else 1.0
        self.plan = lru_cache(maxsize=4)(self._plan)
        self.sync = SharedSync(self.store, cfg, seed)
        self.round = 0
        self.holding: dict[Part, tuple[int, ...]] = {}  # who holds each block now, between rounds
        self.fold = (cooldown_from is not None and cfg.cooldown_fold and self.c != 1.0
                     and can_fold(self.store.model, self.store.candidates))
        self.folded = False  # whether the weights hold c (from the cool-down's first round on)
        # --balance: every worker's speed (cost units per second, a moving average over rounds; None
        # until the first round is measured) and the cost of a step: the layers every sub-network runs,
        # and one partitioned block (set_costs).
        self.speeds: tuple[float, ...] | None = None
        self.costs = (1.0, 1.0)

    def _plan(self, round_: int) -> Plan:
        # A round's plan is made once (cached) from the speeds known when it is first asked for: at the
        # end of the round before, after observe() took that round's times, identically on every rank.
        if self.cfg.balance == "none" or self.speeds is None:
            return make_plan(self.seed, round_, self.comm.world_size, self.store.candidates, self.cfg.min_depth)
        return make_balanced_plan(self.seed, round_, relative_speeds(self.speeds), self.store.candidates,
                                  self.cfg.min_depth, *self.costs, self.cfg.local_iters, self.cfg.balance)

    def set_costs(self, shared: float, block: float) -> None:
        """The cost of one training step of the layers every sub-network runs and of one partitioned
        block (e.g. their forward FLOPs), for --balance: a worker's speed is work over time."""
        self.costs = (float(shared), float(block))

    def observe(self, round_: int, seconds: list[float], steps: list[int]) -> None:
        """Every worker's compute time and steps in ``round_`` (the same lists on every rank, from the
        round's control message): the speeds that the next round's plan follows."""
        if self.cfg.balance == "none":
            return
        shared, block = self.costs
        work = [k * (shared + block * n) for k, n in zip(steps, self.depths(round_))]
        self.speeds = update_speeds(self.speeds, work, seconds)

    def local_steps(self, round_: int) -> int | None:
        steps = None if self.whole(round_) else self.plan(round_).steps
        return None if steps is None else steps[self.comm.rank]

    def depths(self, round_: int) -> list[int]:
        holders = self.holders(round_)
        return [sum(w in held for held in holders.values()) for w in self.everyone]

    def replay(self, rows: list[dict]) -> None:
        """The speeds are a pure function of the recorded per-worker times and steps (the rows hold them
        exactly: JSON floats round-trip), so a resumed run replays them instead of checkpointing them.
        Rows from before a change of worker count are passed over: the speeds restart there."""
        if self.cfg.balance == "none":
            return
        world = self.comm.world_size
        tail: list[dict] = []
        for row in rows:
            same = len(row.get("compute_s_per_worker", ())) == world
            tail = tail + [row] if same else []
        last_dealt = None
        for row in tail:
            r = row["round"]
            self.plan(r)  # made with the speeds known before r, as the uninterrupted run made it
            self.observe(r, row["compute_s_per_worker"], row["steps_per_worker"])
            last_dealt = r if not self.whole(r) else last_dealt
        if last_dealt is not None and self.cfg.scale_activations:
            self.c = self.plan(last_dealt).scale

    def holders(self, round_: int) -> dict[Part, tuple[int, ...]]:
        """Who trains each candidate block in ``round_``: everyone during the warm-up and the cool-down,
        else the plan."""
        if self.whole(round_):
            return {b: self.everyone for b in self.store.candidates}
        plan = self.plan(round_)
        return {b: plan.holders(b) for b in self.store.candidates}

    def whole(self, round_: int) -> bool:
        """Whether ``round_`` trains the whole network as local SGD (warm-up or cool-down)."""
        return round_ < self.warmup_rounds or (self.cooldown_from is not None and round_ >= self.cooldown_from)

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return self.holding

    def eval_scale(self) -> float:
        return 1.0 if self.folded else self.c

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        store, self.round = self.store, round_
        # A checkpoint written after the cool-down's first round began holds folded weights.
        self.folded = self.fold and round_ > self.cooldown_from
        holders = self.holding = self.holders(round_)
        mine = [b for b in store.candidates if self.comm.rank in holders[b]]
        store.start(store.shared_parts + mine, state)
        store.bucket("shared", store.shared_parts, outer=False)  # every rank holds these: no need to send it
        for b in mine:
            store.bucket(b, [b])

    def begin_round(self, round_: int) -> None:
        assert round_ == self.round, f"rank {self.comm.rank} is at round {self.round}, asked for {round_}"
        holders = self.holders(round_)
        model = self.store.model
        model.skip = frozenset(b for b in self.store.candidates if self.comm.rank not in holders[b])
        if self.fold and round_ == self.cooldown_from:
            self.fold_scale()
        # A sub-ResNet trains unscaled; the whole network (warm-up, cool-down) with its branches scaled
        # by c (§2.6), unless c is folded into the weights.
        if self.cfg.balance != "none" and self.cfg.scale_activations and not self.whole(round_) and not self.folded:
            self.c = self.plan(round_).scale  # the scale follows the plan actually trained (--balance)
        whole_scaled = self.whole(round_) and not self.folded
        model.set_residual_scale(self.store.candidates, self.c if whole_scaled else 1.0)
        self.sync.begin_round()

    def end_round(self, round_: int, final: bool = False) -> None:
        """Average and repartition. After the ``final`` round no block goes to the holders of a round
        that never runs: each is only averaged over its current holders."""
        cur = self.holders(round_)
        nxt = cur if final else self.holders(round_ + 1)
        self.synchronize(cur, nxt, round_)
        self.holding = nxt
        self.round = round_ + 1

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold c into the partitioned branches' output weights, identically on every rank (each holds
        the whole network in the cool-down). State that lives in the old units follows: a carried
        momentum averages gradients, which the reparametrization w' = c w divides by c; an outer
        momentum accumulates changes of w, which it multiplies by c."""
        store = self.store
        for name, c in fold_residual_scale(store.model, store.candidates, self.c):
            if name in store.momentum:
                store.momentum[name].div_(c)
            if name in store.outer_momentum:
                store.outer_momentum[name].mul_(c)
        self.folded = True

    @torch.no_grad()
    def synchronize(self, cur: dict[Part, tuple[int, ...]], nxt: dict[Part, tuple[int, ...]], round_: int = 0) -> None:
        """Average every part over its holders of this round and deliver it to next round's holders.

        The flat buffers travel as they are: the all-reduce runs in place, a block with one holder is
        received straight into its new holder's buffer, and only a block with several holders needs
        receive buffers and an average. With a codec the parameters travel encoded, each message with
        the key (seed, round, sender, part), which its receiver knows too.
        """
        comm, store, me = self.comm, self.store, self.comm.rank
        everyone = [b for b in store.candidates if cur[b] == self.everyone and b in store.flats]
        codec, seed = self.sync.codec, self.seed
        bn = self.sync.syncs_bn(round_)
        self.sync.all_reduce(comm, round_)
        for b in everyone:
            all_reduce_flats(comm, store.flats[b], codec, store.layouts[b], (seed, round_, b), bn)
        if self.sync.outer is not None:
            # Parts every rank holds are stepped after their average, identically everywhere; a block
            # with fewer holders is stepped by each holder before it travels (an affine step commutes
            # with the average), and its outer momentum travels with it.
            mine = [b for b in store.candidates if me in cur[b] and b not in everyone]
            self.sync.outer_step([*store.shared_parts, *everyone, *mine])

        def lossy_of(b: Part) -> list[int]:
            return store.layouts[b].lossy(store.flats[b])

        def as_sent(b: Part) -> list[torch.Tensor]:
            """This holder's copy of b as its receivers decode it: under a codec a holder that keeps b
            averages the decoded copies too, so that every holder of the next round has the same bits."""
            if codec is None:
                return store.flats[b]
            key, out = (seed, round_, me, b), [f.clone() for f in store.flats[b]]
            n = store.layouts[b].params
            out[0][:n] = codec.decode(codec.encode(out[0][:n], key), n, key)
            return out

        sends, recvs, pending = [], [], []
        for b in store.candidates:
            held_by, goes_to = cur[b], nxt[b]
            if held_by == self.everyone:
                continue  # averaged by the all-reduce above
            if me in held_by:
                sends += [(dst, f, n, (seed, round_, me, b)) for dst in goes_to if dst != me
                          for f, n in zip(store.flats[b], lossy_of(b))]
            if me in goes_to and held_by == (me,) and goes_to != (me,) and codec is not None:
                pending.append((b, [as_sent(b)]))  # its new co-holders see it decoded; so must it
            if me in goes_to and held_by != (me,):  # a sole holder's own copy is already the average
                if not store.held(b):
                    store.bucket(b, [b], fresh=True)  # allocated here, filled by the exchange below
                if len(held_by) == 1:
                    recvs += [(held_by[0], f, n, (seed, round_, held_by[0], b))
                              for f, n in zip(store.flats[b], lossy_of(b))]
                    continue
                bufs = {h: [torch.empty_like(f) for f in store.flats[b]] for h in held_by if h != me}
                recvs += [(h, f, n, (seed, round_, h, b)) for h, fs in bufs.items() for f, n in zip(fs, lossy_of(b))]
                pending.append((b, [as_sent(b) if h == me else bufs[h] for h in held_by]))
        comm.exchange_coded(sends, recvs, codec)

        for b, copies in pending:
            # In a round that leaves BatchNorm statistics alone, a holder keeps its own and a new holder
            # takes the lowest-ranked holder's (copies are in rank order); saved before the average
            # overwrites this rank's own copy, which may be the buffer itself.
            source = copies[cur[b].index(me) if me in cur[b] else 0]
            kept = [] if bn else [t.clone() for t in store.layouts[b].statistics(source)]
            for i, target in enumerate(store.flats[b]):
                target.copy_(aggregate.mean([c[i] for c in copies]))
            for target, value in zip(store.layouts[b].statistics(store.flats[b]), kept):
                target.copy_(value)
        for b in store.candidates:
            if me not in nxt[b] and store.held(b):
                store.release(b)
