"""The narrow seam between the algorithms and the network (torchft's Manager/ProcessGroup split).

Algorithms see only :class:`Communicator`: a rank, a world size and five collective verbs. Every verb
counts the bytes this rank sends and receives, under the tag that is active (``"sync"`` by default;
evaluation and checkpoint traffic is tagged apart so that training communication stays comparable with
the paper's Table 1).

Byte convention (the same in every implementation, so that the two runtimes report equal figures):

- ``exchange``: exactly the payload of each message, at sender and receiver.
- ``all_reduce``: a ring all-reduce, ``2 (W-1)/W x nbytes`` sent and as much received per rank.
- ``broadcast``: the root sends ``(W-1) x nbytes``; every other rank receives ``nbytes``.
- ``all_gather``: each rank sends ``(W-1) x nbytes`` of its own and receives ``(W-1) x nbytes``.

Messages (what a link's latency is paid for, per rank): a ring all-reduce takes ``2 (W-1)`` sequential
steps; an ``exchange`` posts its messages at once, so it pays for the larger of its sends and receives.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from ..aggregate import divide_

if TYPE_CHECKING:
    from .codecs import Codec


class CommError(RuntimeError):
    """A peer failed, hung past the timeout or broke the protocol; the message names the rank."""


class ByteCounter:
    """Bytes sent and received by one rank, per tag, and the messages that each pays a latency for."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.messages: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()  # work started by run_async may count from a thread of its own

    def add(self, tag: str, sent: float, received: float, messages: int = 0) -> None:
        with self._lock:
            self.sent[tag] += int(round(sent))
            self.received[tag] += int(round(received))
            self.messages[tag] += messages

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"sent": dict(self.sent), "received": dict(self.received)}


class Pending:
    """A started collective: ``wait()`` finishes it (once)."""

    def __init__(self, finish: Callable[[], None]) -> None:
        self._finish: Callable[[], None] | None = finish

    def wait(self) -> None:
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()


class Communicator(ABC):
    """What an algorithm may do with its peers. Implementations: in-process threads, torch.distributed."""

    rank: int
    world_size: int

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.bytes = ByteCounter()
        self._tag = "sync"
        self._local = threading.local()  # a run_async thread's own tag (and, on torch.distributed, group)
        self.idle_s = 0.0
        """Seconds this rank spent off the device while simulated peers computed on it (in-process
        runtime). Real processes run side by side, so there it stays 0. Parallel-equivalent time is
        wall time minus this: without it a rank that syncs every step (data parallel) would be charged
        its peers' compute as well as its own."""

    # --- accounting -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def tag(self, name: str) -> Iterator[None]:
        """Count the bytes moved inside the block under ``name`` (e.g. ``"eval"``, ``"control"``)."""
        previous, self._tag = self._tag, name
        try:
            yield
        finally:
            self._tag = previous

    def _count(self, sent: float, received: float, messages: int = 0) -> None:
        self.bytes.add(getattr(self._local, "tag", self._tag), sent, received, messages)

    # --- verbs ------------------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, average: bool = False) -> None:
        """Sum (or average) ``tensor`` over all ranks, in place."""
        self._count_all_reduce(tensor)
        if self.world_size > 1:
            self._all_reduce(tensor)
        if average:
            self._divide(tensor)

    def _count_all_reduce(self, tensor: torch.Tensor) -> None:
        """A ring all-reduce moves 2 (W-1)/W of the tensor each way."""
        w = self.world_size
        nbytes = tensor.numel() * tensor.element_size()
        self._count(2 * (w - 1) / w * nbytes, 2 * (w - 1) / w * nbytes, 2 * (w - 1))

    def _divide(self, tensor: torch.Tensor) -> None:
        """A sum over the ranks into their mean (integers floor-divide)."""
        divide_(tensor, self.world_size)

    def all_reduce_async(self, tensor: torch.Tensor, average: bool = False) -> "Pending":
        """Start :meth:`all_reduce`; ``tensor`` holds the result once the returned handle's ``wait()``
        has returned. Every rank must start its all-reduces in the same order. This default runs the
        all-reduce inside ``wait()``; a runtime with real asynchronous collectives overlaps it with
        whatever the caller does meanwhile (data parallel: the rest of the backward pass)."""
        return Pending(lambda: self.all_reduce(tensor, average))

    def all_reduce_coded(self, tensor: torch.Tensor, codec: "Codec | None", lossy: int,
                         key: tuple[int, ...], dropped: torch.Tensor | None = None) -> None:
        """Average ``tensor`` over all ranks, in place, its first ``lossy`` values sent through ``codec``.

        A reduce-scatter of encoded shards, then one encoded all-gather: rank r receives every rank's
        encoded copy of shard r, adds the decoded copies in fp32 in rank order (its own decoded too),
        encodes that average once and sends it to every rank; every rank decodes every shard, its own
        included, so all end with the same bits. A value is encoded twice (its contribution, then the
        average of its shard), never at every hop, and each rank sends and receives about
        2 (W-1)/W x the payload, as a ring all-reduce does uncompressed. The values that travel exactly
        are all-reduced as they are.

        ``dropped`` (``lossy`` values), if given, receives what compression took from this rank's
        contribution: each shard minus the decoding of exactly the payload this rank encoded for it
        (error feedback adds it to the next contribution). Zeros where nothing was compressed."""
        w, me = self.world_size, self.rank
        if codec is None or lossy == 0 or w == 1:
            if dropped is not None:
                dropped.zero_()
            self.all_reduce(tensor, average=True)
            return
        head, tail = tensor[:lossy], tensor[lossy:]
        size = -(-lossy // w)
        shards = [head[j * size:(j + 1) * size] for j in range(w)]  # the last may be short (or empty)
        mine = shards[me]

        def contribution(rank: int, j: int) -> tuple[int, ...]:
            return (*key, rank, j)

        def average_of(j: int) -> tuple[int, ...]:
            return (*key, -1, j)

        encoded = {j: codec.encode(shards[j], contribution(me, j)) for j in range(w) if shards[j].numel()}
        if dropped is not None:
            for j, payload in encoded.items():
                lo = j * size
                dropped[lo:lo + shards[j].numel()] = shards[j] - codec.decode(payload, shards[j].numel(), contribution(me, j))
        sends = [(j, p) for j, payload in encoded.items() if j != me for p in payload]
        incoming = {i: codec.empty_payload(mine.numel(), head.device) for i in range(w) if i != me and mine.numel()}
        self.exchange(sends, [(i, p) for i, ps in incoming.items() for p in ps])
        if mine.numel():
            total = None
            for i in range(w):
                payload = encoded[me] if i == me else incoming[i]
                part = codec.decode(payload, mine.numel(), contribution(i, me))
                total = part if total is None else total.add_(part)
            mean = divide_(total, w)
            out = codec.encode(mean, average_of(me))
        else:
            out = []
        gathered = {i: codec.empty_payload(shards[i].numel(), head.device) for i in range(w)
                    if i != me and shards[i].numel()}
        self.exchange([(j, p) for j in range(w) if j != me for p in out],
                      [(i, p) for i, ps in gathered.items() for p in ps])
        for i in range(w):
            if shards[i].numel():
                payload = out if i == me else gathered[i]
                shards[i].copy_(codec.decode(payload, shards[i].numel(), average_of(i)))
        if tail.numel():
            self.all_reduce(tail, average=True)

    def exchange_coded(self, sends: Sequence[tuple[int, torch.Tensor, int, tuple[int, ...]]],
                       recvs: Sequence[tuple[int, torch.Tensor, int, tuple[int, ...]]], codec: "Codec | None") -> None:
        """:meth:`exchange` in which the first ``lossy`` values of each message travel through ``codec``:
        sends are ``(dst, tensor, lossy, key)``, receives ``(src, buffer, lossy, key)`` with the sender's key."""
        if codec is None:
            self.exchange([(d, t) for d, t, _, _ in sends], [(s, b) for s, b, _, _ in recvs])
            return
        out, into, fill = [], [], []
        for dst, t, lossy, key in sends:
            if lossy:
                out += [(dst, p) for p in codec.encode(t[:lossy], key)]
            if t.numel() > lossy:
                out.append((dst, t[lossy:]))
        for src, buf, lossy, key in recvs:
            if lossy:
                payload = codec.empty_payload(lossy, buf.device)
                into += [(src, p) for p in payload]
                fill.append((buf, payload, lossy, key))
            if buf.numel() > lossy:
                into.append((src, buf[lossy:]))
        self.exchange(out, into)
        for buf, payload, lossy, key in fill:
            buf[:lossy].copy_(codec.decode(payload, lossy, key))

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        """Copy ``src``'s ``tensor`` into every rank's ``tensor``."""
        nbytes = tensor.numel() * tensor.element_size()
        w = self.world_size
        self._count((w - 1) * nbytes if self.rank == src else 0, 0 if self.rank == src else nbytes)
        if w > 1:
            self._broadcast(tensor, src)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype everywhere), in rank order."""
        nbytes = tensor.numel() * tensor.element_size()
        w = self.world_size
        self._count((w - 1) * nbytes, (w - 1) * nbytes, w - 1)
        if w == 1:
            return [tensor.clone()]
        return self._all_gather(tensor)

    def exchange(
        self,
        sends: Sequence[tuple[int, torch.Tensor]],
        recvs: Sequence[tuple[int, torch.Tensor]],
    ) -> None:
        """Point-to-point, batched: send each ``(dst, tensor)``, receive into each ``(src, buffer)``.

        All messages are posted at once and the call returns when all have completed, so any pattern
        (including both directions between two ranks) cannot deadlock. Messages between one pair of
        ranks are matched in list order.
        """
        self._check_and_count(sends, recvs)
        if sends or recvs:
            self._exchange(list(sends), list(recvs))

    def _check_and_count(self, sends: Sequence[tuple[int, torch.Tensor]],
                         recvs: Sequence[tuple[int, torch.Tensor]]) -> None:
        """Refuse a message to or from this rank or a rank that does not exist; count the payloads."""
        for dst, t in sends:
            if dst == self.rank or not 0 <= dst < self.world_size:
                raise ValueError(f"rank {self.rank} cannot send to rank {dst}")
        for src, t in recvs:
            if src == self.rank or not 0 <= src < self.world_size:
                raise ValueError(f"rank {self.rank} cannot receive from rank {src}")
        self._count(
            sum(t.numel() * t.element_size() for _, t in sends),
            sum(t.numel() * t.element_size() for _, t in recvs),
            max(len(sends), len(recvs)),
        )

    def exchange_async(self, sends: Sequence[tuple[int, torch.Tensor]],
                       recvs: Sequence[tuple[int, torch.Tensor]]) -> "Pending":
        """Start :meth:`exchange`; the receive buffers hold their messages once the returned handle's
        ``wait()`` has returned. The sent tensors must stay unchanged until then (send copies). Every
        rank must start its exchanges and collectives in the same order, and wait for an exchange before
        it starts another between the same ranks. This default runs the exchange inside ``wait()`` (bytes
        counted there, as :meth:`all_reduce_async`'s); a runtime with non-blocking point-to-point posts the
        messages at once and overlaps them with whatever the caller does meanwhile."""
        sends, recvs = list(sends), list(recvs)
        return Pending(lambda: self.exchange(sends, recvs))

    def run_async(self, work: Callable[[], None]) -> "Pending":
        """Start ``work``, a sequence of this communicator's verbs on tensors that nobody changes until the
        returned handle's ``wait()`` has returned, without waiting for it. Every rank must start the same
        works in the same order, and wait for one before it starts another. Its bytes count under the tag
        in force now. This default runs it inside ``wait()``; a runtime that can runs it meanwhile, beside
        the caller's own verbs (torch.distributed: a thread of its own on the background group)."""
        tag = self._tag

        def finish() -> None:
            with self.tag(tag):
                work()

        return Pending(finish)

    def barrier(self) -> None:
        if self.world_size > 1:
            self._barrier()

    # --- what an implementation provides --------------------------------------------------------
    @abstractmethod
    def _all_reduce(self, tensor: torch.Tensor) -> None: ...

    @abstractmethod
    def _broadcast(self, tensor: torch.Tensor, src: int) -> None: ...

    @abstractmethod
    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]: ...

    @abstractmethod
    def _exchange(
        self, sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]]
    ) -> None: ...

    @abstractmethod
    def _barrier(self) -> None: ...
