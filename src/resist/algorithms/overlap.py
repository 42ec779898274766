"""ResIST's overlapped synchronization (docs/streaming.md, "Overlapped ResIST"; ``--overlap TAU``): what
travels from round r to round r+1 while round r+1's first tau steps compute, and how it lands.

At the end of round r every rank copies what travels; when round r+1 begins it starts the transfers
without waiting: the shared bucket and the blocks every rank held are all-reduced (one asynchronous
all-reduce per dtype buffer, on the copies), and each other block goes from its round-r holders to its
round-r+1 holders in one non-blocking batched exchange (today's messages, byte for byte; with a codec,
blocking ResIST's compressed all-reduces and exchange, run as one piece of work by
:meth:`~resist.comm.Communicator.run_async`). Posting at the
next round's start rather than at this round's end keeps the trainer's small collectives in between
(the round's timings and byte counters) off a link that the transfer fills: over a rate-limited link
each of their messages waited behind the transfer's queued bytes (docs/streaming.md). For this rank
the round-r+1 buckets then fall in three kinds (:func:`kinds`): *kept* (it was the block's only round-r holder: nothing to wait for), *merged* (the
shared bucket, and blocks it held with others: it trains its own copy and merges it at step tau with the
holders' average) and *incoming* (it did not hold the block: the block is skipped until step tau, then
installed as the holders' average). Pure bookkeeping here; :class:`~resist.algorithms.resist.ResIST`
decides when.

With ``--prefetch`` (docs/streaming.md, "Prefetched blocks") the incoming blocks do not wait: tau steps
before round r ends their holders send them as they are then (:func:`prefetch`, a :class:`Prefetch`)
and train on; at the round's end the same messages carry what those last tau steps changed (the delta)
instead of the blocks, with the rest of the synchronization. The new holder installs the early average
when round r+1 begins and adds the average delta at step tau.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import aggregate
from ..comm import Communicator
from ..comm.base import Pending
from ..comm.codecs import Codec
from .buckets import BucketLayout
from .parts import Part, PartStore
from .routing import Holding, Receive, Route, route
from .shared import all_reduce_flats


def kinds(r: Route, nxt: Holding, me: int, coded: bool = False) -> tuple[list[Part], list[Part]]:
    """Of route ``r`` to holders ``nxt``: the buckets this rank merges at step tau (the shared bucket, then
    the blocks it held with others and holds again, in candidate order; ``coded``: also the blocks it alone
    held and keeps that go to others, whose global value is its copy as they decode it), and its incoming
    blocks."""
    shared_kept = [b for b in r.all_reduced if me in nxt[b]] + [a.block for a in r.averages if me in a.holders]
    return ["shared", *sorted(shared_kept + (list(r.reencoded) if coded else []))], list(r.allocated)


def early(r: Route, cur: Holding) -> tuple[list[tuple[int, Part]], list[Receive]]:
    """Of route ``r`` from holders ``cur``: the messages that ``--prefetch`` sends early, those to the ranks
    that did not hold the block in the round that ends (this rank's sends, then its receives: of its
    incoming blocks). Messages between holders (a block held with others and kept) go at the end."""
    return [(d, b) for d, b in r.sends if d not in cur[b]], [x for x in r.receives if x.block in r.allocated]


@dataclass
class Prefetch:
    """Round r's incoming blocks of round r+1 as their holders had them tau steps before round r ended,
    sent then; landed when round r+1 begins (``glob``: the holders' average, per incoming block)."""

    route: Route
    own: dict[Part, list[torch.Tensor]]
    """This rank's copies of what it sends early, as they were when sent."""
    received: dict[tuple[int, Part], list[torch.Tensor]]
    wait: Pending | None = None
    glob: dict[Part, list[torch.Tensor]] | None = None

    @torch.no_grad()
    def land(self) -> dict[Part, list[torch.Tensor]]:
        """Wait for the early exchange (once) and return each incoming block's holders' average."""
        if self.glob is None:
            self.wait.wait()
            self.glob = _averages(self.route.receives, self.route.allocated, self.received)
            self.received = {}
        return self.glob


def _averages(receives, blocks, received) -> dict[Part, list[torch.Tensor]]:
    """Of ``blocks`` (this rank did not hold them): the mean of the copies ``received`` from their holders,
    in rank order (one holder: its copy)."""
    out: dict[Part, list[torch.Tensor]] = {}
    for b in blocks:
        copies = [received[x.src, b] for x in receives if x.block == b]
        out[b] = copies[0] if len(copies) == 1 else [aggregate.mean([c[i] for c in copies]) for i in range(len(copies[0]))]
    return out


@torch.no_grad()
def prefetch(comm: Communicator, store: PartStore, cur: Holding, nxt: Holding) -> Prefetch:
    """Tau steps before round r ends: copy this rank's blocks that go to ranks that did not hold them, and
    start sending them without waiting (the incoming blocks of round r+1 arrive meanwhile)."""
    r = route(cur, nxt, comm.rank, comm.world_size)
    sends, recvs = early(r, cur)
    own = {b: [f.clone() for f in store.flats[b]] for b in sorted({b for _, b in sends})}
    received = {(x.src, x.block): aggregate.empty_like_packed(store.state_tensors(x.block), store.device, store.align)
                for x in recvs}
    pre = Prefetch(r, own, received)
    pre.wait = comm.exchange_async([(d, f) for d, b in sends for f in own[b]],
                                   [(x.src, f) for x in recvs for f in received[x.src, x.block]])
    return pre


@dataclass
class InFlight:
    """Round r's synchronization between its start (end of round r) and the merge at step tau of round
    r+1. Once landed, ``glob`` holds the global value (the average) of every merged and incoming bucket."""

    route: Route
    merges: list[Part]
    incoming: list[Part]
    comm: Communicator | None = None
    waits: list[Pending] = field(default_factory=list)
    reduced: dict[Part, list[torch.Tensor]] = field(default_factory=dict)
    """All-reduced copies, by bucket (the shared bucket, blocks every rank held)."""
    own: dict[Part, list[torch.Tensor]] = field(default_factory=dict)
    """This rank's copies of the blocks it sends or averages with others' (what it had at round r's end)."""
    received: dict[tuple[int, Part], list[torch.Tensor]] = field(default_factory=dict)
    sent: dict[Part, list[torch.Tensor]] = field(default_factory=dict)
    """With the 'delta' merge: this rank's values of what it merges, as they were when sent."""
    glob: dict[Part, list[torch.Tensor]] | None = None
    delta: dict[Part, list[torch.Tensor]] = field(default_factory=dict)
    """With ``--prefetch``: per incoming block, its holders' average change over round r's last tau steps
    (added at step tau; ``glob`` then leaves incoming blocks out)."""
    prefetched: bool = False
    messages: tuple[list, list] | None = None
    """The exchange's (sends, receives), until :meth:`post` starts it (with a codec, each message also
    has the values that travel lossy and its key)."""
    codec: Codec | None = None
    layouts: dict = field(default_factory=dict)
    key: tuple[int, ...] = ()
    """(seed, round): with a codec, what every message's key starts with, as in blocking ResIST."""

    def post(self) -> None:
        """Start every transfer without waiting (once): the all-reduces, then the exchange, in the order
        blocking ResIST runs them. With a codec they are blocking ResIST's compressed all-reduces and
        exchange, byte for byte, run as one piece of work (:meth:`Communicator.run_async`), since a
        compressed all-reduce is two exchanges with a decoding in between."""
        if self.messages is None:
            return
        if self.codec is not None:
            reduced, (sends, recvs) = dict(self.reduced), self.messages

            def work() -> None:
                for k, copies in reduced.items():
                    all_reduce_flats(self.comm, copies, self.codec, self.layouts[k], (*self.key, -1 if k == "shared" else k))
                self.comm.exchange_coded(sends, recvs, self.codec)

            self.waits.append(self.comm.run_async(work))
        else:
            for copies in self.reduced.values():
                self.waits += [self.comm.all_reduce_async(c, average=True) for c in copies]
            self.waits.append(self.comm.exchange_async(*self.messages))
        self.messages = None

    def as_sent(self, b: Part, me: int) -> list[torch.Tensor]:
        """This rank's copy of block ``b`` as its receivers decode it (the copy itself without a codec)."""
        own = self.own[b]
        if self.codec is None:
            return own
        key, n, out = (*self.key, me, b), self.layouts[b].params, [f.clone() for f in own]
        out[0][:n] = self.codec.decode(self.codec.encode(out[0][:n], key), n, key)
        return out

    @torch.no_grad()
    def land(self, me: int) -> dict[Part, list[torch.Tensor]]:
        """Wait for every transfer (once; posted first if it was not) and return the global values: the
        all-reduced average, the holders' copies averaged in rank order, or a sole holder's copy as
        received."""
        if self.glob is not None:
            return self.glob
        self.post()
        for w in self.waits:
            w.wait()
        glob = {k: v for k, v in self.reduced.items() if k in self.merges}
        for a in self.route.averages:
            if self.prefetched and a.block in self.incoming:
                continue
            copies = [self.as_sent(a.block, me) if h == me else self.received[h, a.block] for h in a.holders]
            glob[a.block] = [aggregate.mean([c[i] for c in copies]) for i in range(len(copies[0]))]
        for b in self.route.reencoded if self.codec is not None else ():
            glob[b] = self.as_sent(b, me)
        incoming = set(self.incoming) if self.prefetched else set()
        for rec in self.route.receives:
            if rec.direct and rec.block not in incoming:
                glob[rec.block] = self.received[rec.src, rec.block]
        if incoming:
            self.delta = _averages(self.route.receives, self.incoming, self.received)
        self.glob, self.waits, self.reduced, self.own, self.received = glob, [], {}, {}, {}
        return glob


@torch.no_grad()
def start(comm: Communicator, store: PartStore, cur: Holding, nxt: Holding, keep_sent: bool = False,
          pre: Prefetch | None = None, codec: Codec | None = None, key: tuple[int, ...] = ()) -> InFlight:
    """Copy what travels from holders ``cur`` to ``nxt``, ready for :meth:`InFlight.post`; release the
    blocks this rank stops holding (their copies travel). ``keep_sent``: also keep this rank's values of
    what it merges (the 'delta' merge adds the steps taken since). ``pre``: the early messages went
    ahead (``--prefetch``); the same messages now carry the change since. ``codec``: what travels is
    compressed as blocking ResIST compresses it, with message keys that start with ``key`` (seed, round)."""
    me = comm.rank
    r = route(cur, nxt, me, comm.world_size)
    merges, incoming = kinds(r, nxt, me, codec is not None)
    layouts = {"shared": store.layouts["shared"]}  # a block's, also where this rank holds none of it
    layouts.update({b: BucketLayout.of(store.module(b).parameters(), store.module(b).buffers(), store.align)
                    for b in cur})
    fl = InFlight(r, merges, incoming, comm, prefetched=pre is not None, codec=codec, key=key, layouts=layouts)
    if keep_sent:
        fl.sent = {k: [f.clone() for f in store.flats[k]] for k in merges}
    for k in ["shared", *r.all_reduced]:
        fl.reduced[k] = [f.clone() for f in store.flats[k]]
    travels = {b for _, b in r.sends} | {a.block for a in r.averages if me in a.holders}
    fl.own = {b: [f.clone() for f in store.flats[b]] for b in sorted(travels)}
    for rec in r.receives:  # laid out as the block's bucket (its state tensors; meta if not held)
        bufs = aggregate.empty_like_packed(store.state_tensors(rec.block), store.device, store.align)
        fl.received[rec.src, rec.block] = bufs
    changes = {b: [f - s for f, s in zip(fl.own[b], sent)] for b, sent in pre.own.items()} if pre else {}
    sends = [(dst, b, i, f) for dst, b in r.sends
             for i, f in enumerate(changes[b] if pre and dst not in cur[b] else fl.own[b])]
    recvs = [(rec.src, rec.block, i, f) for rec in r.receives for i, f in enumerate(fl.received[rec.src, rec.block])]
    if codec is None:
        fl.messages = ([(d, f) for d, _, _, f in sends], [(s, f) for s, _, _, f in recvs])
    else:  # each message with how many of its values travel lossy (its bucket's) and its key
        def lossy(b: Part, i: int, f: torch.Tensor) -> int:
            return layouts[b].params if i == 0 and f.dtype == torch.float32 else 0

        fl.messages = ([(d, f, lossy(b, i, f), (*key, me, b)) for d, b, i, f in sends],
                       [(s, f, lossy(b, i, f), (*key, s, b)) for s, b, i, f in recvs])
    for b in r.released:
        store.release(b)
    return fl


@torch.no_grad()
def install(store: PartStore, b: Part, value: list[torch.Tensor]) -> None:
    """Block ``b`` (not held) becomes a bucket of this rank holding ``value``."""
    store.bucket(b, [b], fresh=True)
    for t, v in zip(store.flats[b], value):
        t.copy_(v)


@torch.no_grad()
def mix(live: list[torch.Tensor], glob: list[torch.Tensor], alpha: float,
        sent: list[torch.Tensor] | None = None) -> None:
    """Streaming DiLoCo's merge: live <- global + alpha (live - global)
    (:meth:`~resist.algorithms.streaming.StreamingDiLoCo._merge`); with ``sent`` (this rank's values when
    they were sent) the 'delta' merge instead: live <- global + (live - sent), the average plus the steps
    taken since, as a blocking round followed by those steps would have them but for where their
    gradients were taken. Integers (and alpha 0 without ``sent``) take the global value."""
    for i, (l_, g_) in enumerate(zip(live, glob)):
        if not l_.is_floating_point() or (sent is None and alpha == 0):
            l_.copy_(g_)
        elif sent is not None:
            l_.copy_(g_ + (l_ - sent[i]))
        else:
            l_.copy_(g_ + (l_ - g_) * alpha)


@torch.no_grad()
def add(live: list[torch.Tensor], delta: list[torch.Tensor]) -> None:
    """A prefetched block takes its holders' last steps: live <- live + delta."""
    for l_, d in zip(live, delta):
        l_.add_(d)
