"""In-process runtime: W simulated workers as threads of one process.

Each worker runs the same SPMD code as a torch.distributed process would. A single token lets one
worker compute at a time (a worker gives it up only while it waits in a collective), so the simulation
behaves like W workers taking turns on one device: no oversubscribed cores, and each worker's compute
time is measured without interference. Reductions sum in rank order, so results are deterministic.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable, Iterator

import torch

from .base import CommError, Communicator

_GRACE_S = 3.0  # how long the other workers may take to fail after the first (the dist runtime's grace)


class LocalGroup:
    """State shared by the simulated workers of one in-process world."""

    def __init__(self, world_size: int, timeout: float = 1800.0) -> None:
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.timeout = timeout
        self.token = threading.Lock()
        self.cond = threading.Condition()
        self.arrived = 0  # workers waiting at the current barrier
        self.generation = 0  # barriers passed so far
        self.slots: list[Any] = [None] * world_size
        self.mailboxes: dict[tuple[int, int], deque] = defaultdict(deque)
        self.failed_rank: int | None = None
        self.holder: int | None = None
        """The rank holding the token (computing), if any: the one to blame for a stall."""
        self.last_handoff = time.monotonic()
        """When the token last changed hands. The simulated workers compute one after another, so a
        rank waiting in a collective waits for the sum of its peers' compute; only a stretch with no
        handoff at all (a peer stuck while computing, or every rank waiting) is a stall."""

    def abort(self, rank: int) -> None:
        """Wake every waiting worker so that it fails instead of hanging."""
        with self.cond:
            if self.failed_rank is None:
                self.failed_rank = rank
            self.cond.notify_all()


class LocalCommunicator(Communicator):
    def __init__(self, group: LocalGroup, rank: int) -> None:
        super().__init__(rank, group.world_size)
        self.group = group
        self.holding = False

    def _failure(self) -> CommError:
        g = self.group
        if g.failed_rank is not None:
            return CommError(f"rank {self.rank}: peer rank {g.failed_rank} failed")
        if g.holder is not None:
            return CommError(f"rank {self.rank}: timed out: rank {g.holder} computed for {g.timeout:g} s "
                             f"without handing the device on")
        return CommError(f"rank {self.rank}: timed out: no simulated worker made progress for {g.timeout:g} s")

    def take_token(self) -> None:
        """Wait for the device; a peer's failure or a stall of ``timeout`` seconds (the holder stuck while
        computing) raises :class:`CommError` instead of waiting for ever."""
        g = self.group
        while not g.token.acquire(timeout=min(0.5, g.timeout)):
            if g.failed_rank is not None or time.monotonic() - g.last_handoff > g.timeout:
                raise self._failure()
        self.holding = True
        g.holder = self.rank
        g.last_handoff = time.monotonic()

    def give_token(self) -> None:
        g = self.group
        self.holding = False
        g.holder = None
        g.last_handoff = time.monotonic()
        g.token.release()

    @contextlib.contextmanager
    def _off_device(self) -> Iterator[None]:
        """Give the token to the peers while waiting for them; the wait counts as idle time."""
        t0 = time.perf_counter()
        self.give_token()
        try:
            yield
        finally:
            self.take_token()
            self.idle_s += time.perf_counter() - t0

    def _wait(self, ready: Callable[[], bool]) -> bool:
        """With ``group.cond`` held: wait until ``ready()``; False on a peer's failure or a stall of
        ``timeout`` seconds without a token handoff (never merely because the peers compute long)."""
        g = self.group
        while not ready():
            if g.failed_rank is not None:
                return False
            left = g.timeout - (time.monotonic() - g.last_handoff)
            if left <= 0:
                return False
            g.cond.wait(left)
        return True

    def _sync(self) -> None:
        g = self.group
        with self._off_device(), g.cond:
            generation = g.generation
            g.arrived += 1
            if g.arrived == g.world_size:
                g.arrived, g.generation = 0, g.generation + 1
                g.cond.notify_all()
            elif not self._wait(lambda: g.generation != generation):
                raise self._failure()

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        slots = self.group.slots
        slots[self.rank] = tensor
        self._sync()
        total = slots[0].clone()
        for t in slots[1:]:
            total += t
        self._sync()
        tensor.copy_(total)

    def _broadcast(self, tensor: torch.Tensor, src: int) -> None:
        self.group.slots[self.rank] = tensor
        self._sync()
        if self.rank != src:
            tensor.copy_(self.group.slots[src])
        self._sync()

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.group.slots[self.rank] = tensor
        self._sync()
        out = [t.clone() for t in self.group.slots]
        self._sync()
        return out

    def _exchange(self, sends, recvs) -> None:
        g = self.group
        with g.cond:
            for dst, t in sends:
                g.mailboxes[(self.rank, dst)].append(t.detach().clone())
            g.cond.notify_all()
        for src, buf in recvs:
            box = g.mailboxes[(src, self.rank)]
            with self._off_device(), g.cond:
                msg = box.popleft() if self._wait(lambda: bool(box)) else None
            if msg is None:
                raise self._failure()
            if msg.shape != buf.shape or msg.dtype != buf.dtype:
                raise CommError(
                    f"rank {self.rank}: message from rank {src} is {tuple(msg.shape)} {msg.dtype}, "
                    f"expected {tuple(buf.shape)} {buf.dtype}"
                )
            buf.copy_(msg)

    def _barrier(self) -> None:
        self._sync()


def run_in_process(world_size: int, fn: Callable[[Communicator], Any], timeout: float = 1800.0) -> list:
    """Run ``fn(comm)`` as ``world_size`` simulated workers; return their results in rank order.

    If any worker raises, the others are woken with a :class:`CommError` and the first worker's own
    exception is re-raised here. A worker that neither finishes nor fails within a short grace after
    that (stuck while computing, so that the others timed out) is named in a :class:`CommError`, as the
    dist runtime names a stuck rank, and left behind (its thread is a daemon).
    """
    group = LocalGroup(world_size, timeout)
    results: list[Any] = [None] * world_size
    errors: list[BaseException | None] = [None] * world_size
    failed: list[int] = []  # ranks in the order they failed

    def worker(rank: int) -> None:
        comm = LocalCommunicator(group, rank)
        try:
            comm.take_token()
            results[rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors[rank] = exc
            failed.append(rank)
            group.abort(rank)
        finally:
            if comm.holding:
                comm.give_token()

    stuck: list[int] = []
    if world_size == 1:
        worker(0)
    else:
        threads = [threading.Thread(target=worker, args=(r,), daemon=True, name=f"resist-rank{r}")
                   for r in range(world_size)]
        for t in threads:
            t.start()
        give_up = None
        while alive := [r for r, t in enumerate(threads) if t.is_alive()]:
            if failed:
                give_up = give_up or time.monotonic() + _GRACE_S
                if time.monotonic() > give_up:
                    stuck = alive
                    break
            threads[alive[0]].join(0.1)
    primary = [errors[r] for r in failed if not isinstance(errors[r], CommError)]
    if primary:
        raise primary[0]
    if stuck:
        who = f"rank {stuck[0]}" if len(stuck) == 1 else "ranks " + ", ".join(map(str, stuck))
        raise CommError(f"{who} did not finish or fail (stuck?) while rank {failed[0]} failed: "
                        f"{errors[failed[0]]}") from errors[failed[0]]
    if failed:
        raise errors[failed[0]]
    return results
