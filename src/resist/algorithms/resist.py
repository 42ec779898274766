"""ResIST (Dun et al., Algorithm 1): train shallow sub-ResNets independently, average, repartition.

Each round every rank trains its sub-ResNet (the shared layers plus the partitioned blocks the plan
deals it) for ``local_iters`` steps. Then, decentralized (§2.5, Fig. 3): layers everybody holds are
all-reduced as one flat buffer per dtype, and each partitioned block goes straight from this round's
holders to next round's holders in one batched point-to-point exchange; a receiver averages the
holders' copies in rank order. A block kept by the same single holder moves nothing. BatchNorm running
statistics (and carried momentum) travel with their block. An optional warm-up (§2.6) first trains the
whole network, its partitioned branches scaled by c, as local SGD; an optional cool-down (ours, not the
paper's) ends training the same way, with c folded into the weights that end each branch.

With ``--overlap TAU`` (docs/streaming.md, "Overlapped ResIST") round r's synchronization runs behind
round r+1's first tau steps (:mod:`.overlap`): blocks that come to this rank are skipped until step tau,
then installed as the holders' average and added to the optimizer (:meth:`joined`); the shared layers,
and blocks this rank held with others and keeps, merge at step tau as a Streaming DiLoCo fragment does
(global = the holders' average; live <- global + alpha (live - global)). The last round synchronizes at
once. Evaluation, checkpoints and the final model wait for the transfers (the merge stays at step tau)
and see the global model, as blocking ResIST's; a checkpoint also keeps each rank's live copies.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from .. import aggregate
from ..comm import Communicator
from ..config import AlgoConfig
from ..models.protocol import can_fold, fold_residual_scale
from ..plan import Plan, eval_scale, make_balanced_plan, make_plan, relative_speeds, update_speeds
from . import overlap
from .base import Algorithm, make_store
from .parts import Part
from .routing import Route, holding, route
from .shared import SharedSync, all_reduce_flats


class ResIST(Algorithm):
    partitions = True
    uses_warmup = True
    supports_outer = True
    compressible = True
    defers_bn_sync = True
    balances = True
    elastic = True
    overlaps = True

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int, warmup_rounds: int = 0, cooldown_from: int | None = None) -> None:
        self.comm, self.cfg, self.seed, self.warmup_rounds = comm, cfg, seed, warmup_rounds
        self.cooldown_from = cooldown_from  # first round of the cool-down (None: none)
        self.store = make_store(comm, build_model, device, cfg, cfg.carry_momentum, seed, outer=cfg.outer,
                                outer_blocks=cfg.outer_blocks)
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
        # --overlap: the synchronization in flight from the last round's end to this round's step tau,
        # and the parameters that joined at that step (for the trainer's optimizer).
        self.inflight: overlap.InFlight | None = None
        self._joined: list[tuple[str, nn.Parameter]] = []
        self._restart = False  # --overlap-restart: the merge just landed
        # --prefetch: the early exchange of this round's moving blocks (from after step max(H - tau, tau)
        # to the next round's start), and the step after which it starts (round_length).
        self.early: overlap.Prefetch | None = None
        self._prefetch_after: int | None = None

    def _plan(self, round_: int) -> Plan:
        # A round's plan is made once (cached) from the speeds known when it is first asked for: at the
        # end of the round before, after observe() took that round's times, identically on every rank.
        if self.cfg.balance == "none" or self.speeds is None:
            return make_plan(self.seed, round_, self.comm.world_size, self.store.candidates, self.cfg.min_depth)
        return make_balanced_plan(self.seed, round_, relative_speeds(self.speeds), self.store.candidates,
                                  self.cfg.min_depth, *self.costs, self.cfg.local_iters, self.cfg.balance)

    def reconfigure(self, comm: Communicator) -> None:
        """Go on over another membership (elastic training): ``comm``'s ranks are the new quorum's, and
        every plan from here on deals the blocks over its world size (the plan is a pure function of
        (seed, round, membership)); the evaluation scale follows the new S."""
        self.comm, self.everyone = comm, tuple(range(comm.world_size))
        self.plan = lru_cache(maxsize=4)(self._plan)
        if self.cfg.scale_activations:
            self.c = eval_scale(comm.world_size, len(self.store.candidates), self.cfg.min_depth)

    def join(self) -> None:
        """A worker joining a run in progress: it holds the shared layers (zeros, so that its share of
        their all-reduce adds nothing) and no block; the synchronization fills in the rest."""
        store = self.store
        for part in store.shared_parts:  # allocated, not initialized: no seeded (global-RNG) draw
            store.materialize(part, init=False)
        store.bucket("shared", store.shared_parts, outer=False)
        for f in store.flats["shared"]:
            f.zero_()
        self.holding = {b: () for b in store.candidates}

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
        other = [i for i, row in enumerate(rows) if len(row.get("compute_s_per_worker", ())) != world]
        last_dealt = None
        for row in rows[other[-1] + 1 if other else 0:]:
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
        return holding(self.plan(round_))

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

    def round_length(self, round_: int, steps: int, last: bool) -> None:
        # --prefetch fires after local step max(H - tau, tau) of a round another round follows (None:
        # never): tau steps before the end, but not before this round's own merge at step tau, so that
        # one exchange at a time is in flight.
        tau = self.cfg.overlap
        ahead = self.cfg.prefetch and not last and steps > tau
        self._prefetch_after = max(steps - tau, tau) if ahead else None

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
        if self.early is not None:  # --prefetch: incoming blocks train from step 0, from their early value
            for b, value in self.early.land().items():
                overlap.install(self.store, b, value)
            self.early = None
        if self.inflight is not None:
            self.inflight.post()  # now: the trainer's collectives since the round's end are done
            if self.cfg.overlap == 0:  # everything lands before step 0: blocking ResIST, bit for bit
                self._merge()
            elif not self.inflight.prefetched:  # incoming blocks are skipped (ResIST's own skip) until step tau
                model.skip = model.skip | frozenset(self.inflight.incoming)

    def after_step(self, round_: int, step: int) -> None:
        if self.inflight is not None and step + 1 == self.cfg.overlap:
            store = self.store
            self._joined = [(n, p) for b in self._merge()
                            for n, p in zip(store._param_names(b), store.module(b).parameters())]
            self._restart = self.cfg.overlap_restart
        if step + 1 == self._prefetch_after:  # (after this round's own merge, if both are due)
            self._prefetch(round_)

    def _prefetch(self, round_: int) -> None:
        self.early = overlap.prefetch(self.comm, self.store, self.holders(round_), self.holders(round_ + 1))
        self._prefetch_after = None

    def joined(self) -> list[tuple[str, nn.Parameter]]:
        out, self._joined = self._joined, []
        return out

    def restarts(self) -> bool:
        out, self._restart = self._restart, False
        return out

    def end_round(self, round_: int, final: bool = False) -> None:
        """Average and repartition. After the ``final`` round no block goes to the holders of a round
        that never runs: each is only averaged over its current holders."""
        if self.inflight is not None:  # a round shorter than tau steps (the schedule's last)
            self._merge()
        cur = self.holders(round_)
        nxt = cur if final else self.holders(round_ + 1)
        if self.early is not None and final:  # a run stopped early (--stop-at): no round r+1 to prefetch for
            self.early.land()
            self.early = None
        if self.cfg.overlap is None or final:  # after the last round: only averages, waited for at once
            self.synchronize(cur, nxt, round_)
        else:
            if self.cfg.prefetch and self.early is None:
                self._prefetch(round_)  # a round that ended before step H - tau (no steps: `resist comm`)
            self.inflight = overlap.start(self.comm, self.store, cur, nxt, self.cfg.overlap_merge == "delta",
                                          self.early, self.sync.codec, (self.seed, round_))
        self.holding = nxt
        self.round = round_ + 1

    @torch.no_grad()
    def _merge(self) -> list[Part]:
        """Step tau of an overlapped round: wait for the last round's transfers, merge the shared layers
        and the shared-kept blocks, and install the incoming blocks, which now train; returns those."""
        fl, store = self.inflight, self.store
        glob = fl.land(self.comm.rank)
        for key in fl.merges:
            overlap.mix(store.flats[key], glob[key], self.cfg.mix_alpha, fl.sent.get(key))
        if fl.prefetched:  # installed at the round's start and training since: they take the delta
            for b in fl.incoming:
                overlap.add(store.flats[b], fl.delta[b])
            self.inflight = None
            return []
        for b in fl.incoming:
            overlap.install(store, b, glob[b])
        self.inflight = None
        store.model.skip = store.model.skip - frozenset(fl.incoming)
        return fl.incoming

    @contextlib.contextmanager
    def _global(self):
        """Inside: this rank's store holds the global model as blocking ResIST's would between rounds
        (the transfers in flight waited for: every average in place, incoming blocks installed); outside,
        its live copies and the pending merge, untouched."""
        fl, store = self.inflight, self.store
        if fl is None:
            yield
            return
        with torch.no_grad():
            glob = self._land()
            live = {k: [t.clone() for t in store.flats[k]] for k in fl.merges}
            for k in fl.merges:
                overlap.mix(store.flats[k], glob[k], 0.0)
            for b in fl.incoming:
                overlap.install(store, b, glob[b])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, saved in live.items():
                    for t, v in zip(store.flats[k], saved):
                        t.copy_(v)
                for b in fl.incoming:
                    store.release(b)

    def _land(self) -> dict[Part, list[torch.Tensor]]:
        """Between rounds: wait for the transfers in flight (the early exchange first) and return the
        global values of what this rank merges and of its incoming blocks (prefetched: early + delta)."""
        fl = self.inflight
        early = self.early.land() if self.early is not None else {}
        glob = fl.land(self.comm.rank)
        if fl.prefetched:
            glob = {**glob, **{b: [e + d for e, d in zip(early[b], fl.delta[b])] for b in fl.incoming}}
        return glob

    def evaluate(self, evaluator):
        with self._global():
            return super().evaluate(evaluator)

    def gather_state(self, tag: str = "checkpoint") -> dict[str, torch.Tensor] | None:
        with self._global():
            return super().gather_state(tag)

    def save_final(self, out_dir) -> None:
        with self._global():
            super().save_final(out_dir)

    def rank_state(self) -> dict[str, torch.Tensor]:
        """Besides :class:`SharedSync`'s: with a synchronization in flight (a checkpoint between overlapped
        rounds) this rank's live copies of what merges at step tau (its end-of-round values; zeros for the
        blocks it does not merge, so that every rank has the same keys and shapes). The global values are
        the checkpoint's model."""
        state = super().rank_state()
        fl, store = self.inflight, self.store
        if fl is None:
            return state

        def zeros(key: Part) -> list[torch.Tensor]:
            return [t.zero_() for t in aggregate.empty_like_packed(store.state_tensors(key), store.device, store.align)]

        live_keys = self._live_keys(fl)
        for key in ["shared", *store.candidates]:
            live = store.flats[key] if key in live_keys else zeros(key)
            state.update({f"overlap/{key}/{i}": t for i, t in enumerate(live)})
        if fl.prefetched:  # each incoming block's early average and delta, as they land in round r+1
            self._land()
            early = self.early.land()
            for key in store.candidates:
                inc = key in fl.incoming
                state.update({f"prefetch/{key}/{i}": t for i, t in enumerate(early[key] if inc else zeros(key))})
                state.update({f"prefetch_delta/{key}/{i}": t for i, t in enumerate(fl.delta[key] if inc else zeros(key))})
        return state

    def _live_keys(self, fl: overlap.InFlight) -> set[Part]:
        """What a checkpoint between overlapped rounds keeps of this rank's live copies: what it merges at
        step tau; prefetched, also the blocks it alone held and keeps, whose new holders' copy is early +
        delta, which need not be their exact bits."""
        kept = {k for k in self.store.flats if k not in fl.incoming} if fl.prefetched else set()
        return set(fl.merges) | kept

    @torch.no_grad()
    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        """After :meth:`start` from a checkpoint's global model: with a synchronization that was in flight,
        the global values become the landed transfers, this rank's live copies come back, and its
        incoming blocks wait for step tau again."""
        super().load_rank_state(state)
        if "overlap/shared/0" not in state:
            return
        store, me, r = self.store, self.comm.rank, self.round
        cur, nxt = self.holders(r - 1), self.holders(r)
        r_ = route(cur, nxt, me, self.comm.world_size)
        fl = overlap.InFlight(r_, *overlap.kinds(r_, nxt, me, self.sync.codec is not None))
        fl.glob = {k: [t.clone() for t in store.flats[k]] for k in [*fl.merges, *fl.incoming]}
        fl.prefetched = any(k.startswith("prefetch/") for k in state)
        for k in self._live_keys(fl):
            for i, t in enumerate(store.flats[k]):
                t.copy_(state[f"overlap/{k}/{i}"])
        if self.cfg.overlap_merge == "delta":  # checkpoints are taken as the transfers start: live = sent
            fl.sent = {k: [t.clone() for t in store.flats[k]] for k in fl.merges}
        if fl.prefetched:
            n = {b: len(store.flats[b]) for b in fl.incoming}
            fl.delta = {b: [state[f"prefetch_delta/{b}/{i}"].clone() for i in range(n[b])] for b in fl.incoming}
            self.early = overlap.Prefetch(r_, {}, {}, glob={b: [state[f"prefetch/{b}/{i}"].clone()
                                                               for i in range(n[b])] for b in fl.incoming})
        for b in fl.incoming:
            store.release(b)
        self.inflight = fl

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
    def synchronize(self, cur: dict[Part, tuple[int, ...]], nxt: dict[Part, tuple[int, ...]], round_: int = 0,
                    shared: bool = True, release: bool = True) -> tuple[int, ...]:
        """Average every part over its holders of this round and deliver it to next round's holders
        (§2.5, Fig. 3), executing this rank's :func:`~resist.algorithms.routing.route`.

        The flat buffers travel as they are: the all-reduce runs in place, a block with one holder is
        received straight into its new holder's buffer, and only a block with several holders needs
        receive buffers and an average. With a codec the parameters travel encoded, each message with
        the key (seed, round, sender, part), which its receiver knows too.
        """
        store, r = self.store, route(cur, nxt, self.comm.rank, self.comm.world_size)
        bn = self.sync.syncs_bn(round_)
        if shared:  # (elastic training averages the shared layers over the workers that trained them)
            self.sync.all_reduce(self.comm, round_)
        for b in r.all_reduced:  # (its outer momentum, the same on every rank, stays home)
            layout = store.layouts[b]
            all_reduce_flats(self.comm, layout.without_outer(store.flats[b]), self.sync.codec, layout,
                             (self.seed, round_, b), bn)
        if self.sync.outer is not None:
            # Parts every rank holds are stepped after their average, identically everywhere; a block
            # with fewer holders is stepped by each holder before it travels (an affine step commutes
            # with the average), and its outer momentum travels with it; --no-outer-blocks steps the
            # shared layers only.
            self.sync.outer_step([p for p in (*store.shared_parts, *r.all_reduced, *r.stepped) if store.stepped(p)])
        for b, copies in self._exchange(r, round_):
            self._average(b, copies, cur[b], bn)
        if release:  # (elastic training releases them once every member has everything)
            for b in r.released:
                store.release(b)
        return r.released

    def _exchange(self, r: Route, round_: int) -> list[tuple[Part, list[list[torch.Tensor]]]]:
        """The point-to-point part of route ``r``, as one batched exchange; returns each block this rank
        must average, with the copies to average (in its holders' rank order)."""
        store, me, codec = self.store, self.comm.rank, self.sync.codec
        for b in r.allocated:
            store.bucket(b, [b], fresh=True)  # filled by the exchange below

        def messages(peer: int, b: Part, flats: list[torch.Tensor], sender: int) -> list:
            return [(peer, f, n, (self.seed, round_, sender, b)) for f, n in zip(flats, store.layouts[b].lossy(flats))]

        sends = [m for dst, b in r.sends for m in messages(dst, b, store.flats[b], me)]
        recvs, bufs = [], {}
        for rec in r.receives:
            if rec.direct:
                recvs += messages(rec.src, rec.block, store.flats[rec.block], rec.src)
            else:
                bufs[rec.src, rec.block] = [torch.empty_like(f) for f in store.flats[rec.block]]
                recvs += messages(rec.src, rec.block, bufs[rec.src, rec.block], rec.src)
        # Under a codec a holder that keeps a block averages the decoded copies too (its own as its
        # receivers decode it), so that every holder of the next round has the same bits.
        pending = [(b, [self._as_sent(b, round_)]) for b in r.reencoded] if codec is not None else []
        pending += [(a.block, [self._as_sent(a.block, round_) if h == me else bufs[h, a.block] for h in a.holders])
                    for a in r.averages]
        self.comm.exchange_coded(sends, recvs, codec)
        return pending

    def _as_sent(self, b: Part, round_: int) -> list[torch.Tensor]:
        """This rank's copy of block ``b`` as its receivers decode it (the copy itself without a codec)."""
        codec, flats = self.sync.codec, self.store.flats[b]
        if codec is None:
            return flats
        key, out, n = (self.seed, round_, self.comm.rank, b), [f.clone() for f in flats], self.store.layouts[b].params
        out[0][:n] = codec.decode(codec.encode(out[0][:n], key), n, key)
        return out

    def _average(self, b: Part, copies: list[list[torch.Tensor]], holders: tuple[int, ...], bn: bool) -> None:
        """Block ``b`` becomes the mean of ``copies`` (its ``holders``', in rank order). In a round that
        leaves BatchNorm statistics alone, a holder keeps its own and a new holder takes the
        lowest-ranked holder's; saved before the average overwrites this rank's own copy, which may be
        the buffer itself."""
        me, flats, layout = self.comm.rank, self.store.flats[b], self.store.layouts[b]
        source = copies[holders.index(me) if me in holders else 0]
        kept = [] if bn else [t.clone() for t in layout.statistics(source)]
        for i, target in enumerate(flats):
            target.copy_(aggregate.mean([c[i] for c in copies]))
        for target, value in zip(layout.statistics(flats), kept):
            target.copy_(value)
