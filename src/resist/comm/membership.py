"""Elastic membership: which workers train together now, and a fresh :class:`Communicator` over them.

Workers die and join mid-run. Each round boundary, every live worker asks :meth:`Membership.quorum`
for the next quorum (the sorted worker ids that train together next, each member's rank being its
index) and builds :meth:`Membership.communicator` for it; a verb that meets a vanished peer raises
:class:`CommError`, and the worker goes back to ``quorum()``.

Two implementations:

- :class:`TorchftMembership`: separate processes, coordinated by torchft's Lighthouse (a Rust gRPC
  server, :func:`start_lighthouse`), talking over torchft's reconfigurable ``ProcessGroupGloo``.
- :class:`LocalMembership` with :class:`LocalCoordinator`: workers as threads of one process (tests,
  the in-process elastic runtime), with the same quorum rules.

What torchft provides: the Lighthouse (quorum formation, heartbeat-based liveness, the members' ``data``
carried through as JSON) and a gloo process group that can be configured again for each quorum. What we
add: heartbeats from a daemon thread (so a worker computing a long round stays healthy), a quorum id
unique per quorum, a rendezvous store per worker (members[0]'s serves each quorum under its own prefix),
refusal of a duplicate worker id, one-line :class:`CommError` s, and aborting the process group on the
first error so that the failure cascades to every peer at once.

The Lighthouse's quorum rules (torchft 0.2.0, ``src/lighthouse.rs``, checked at every request and every
``quorum_tick_ms``). A worker is *healthy* if it heartbeat within ``heartbeat_timeout_ms`` (a quorum
request counts as a heartbeat); it is a *participant* once it asks for a quorum, until a quorum forms
(each formed quorum clears the participants). A quorum forms, made of every healthy participant:

1. *fast quorum*: at once if every member of the previous quorum is a healthy participant (joiners who
   have asked by then are included; ``min_replicas`` is not checked);
2. otherwise only if there are at least ``min_replicas`` healthy participants, more than half of the
   healthy workers participate (against split brain), and either every healthy worker participates or
   ``join_timeout_ms`` has passed since the first participant asked.

Consequences we rely on. A joiner that asks while the members are mid-round makes no fast quorum (the
previous members have not asked) and not every healthy worker has asked, so it waits until the members
reach their round end and ask: then the fast quorum takes everyone. A quorum
without a healthy worker forms only through the join timeout, so :func:`start_lighthouse` makes it long
(10 minutes, to be set above the longest round): a slow but live worker is waited for, never dropped;
only a dead one (heartbeats stopped) is. The very first quorum is an exception: a worker that has not
heartbeat yet is unknown, so the first asker may form a quorum alone if ``min_workers`` allows it;
:class:`TorchftMembership` heartbeats once in its constructor, so construct every worker's membership
before the first ``quorum()`` (or set ``min_workers``). The Lighthouse keeps the quorum id when the
members do not change; :attr:`Quorum.id` is the quorum's creation time in nanoseconds instead, unique
and increasing as long as the Lighthouse host's clock does not step back.

Detection time. A killed process closes its sockets, so gloo fails the peers' pending collective at
once ("Connection closed by peer"); those abort their process group, which fails their own neighbours in
turn, so every member raises within tens of milliseconds (measured with 3 workers on one core, see
``tests/distributed/test_membership.py``: 0.02-0.05 s from SIGKILL to the last survivor's CommError).
The Lighthouse drops the dead worker after its heartbeats stop for ``heartbeat_timeout_ms`` (800 ms by
default; heartbeats every 100 ms), so the survivors' next quorum forms 0.76-0.84 s after the kill. A peer that hangs without closing its sockets (a frozen host)
surfaces only after the communicator's timeout.

Known limits. Two live processes with the same worker id are indistinguishable to the Lighthouse (it
keys participants by id: the later request replaces the earlier). Each process puts a random token in
its data; the first quorum that both ask for shows one token, and the other process is refused with a
:class:`CommError` naming the id (the Lighthouse decides which one keeps the id). A ``quorum()`` that
times out leaves the worker registered as a participant at the Lighthouse, so the next quorum may
include it although it is not listening; that quorum's ``communicator()`` then times out and the
survivors ask again. Give ``quorum()`` a timeout above the longest round. Likewise a worker that dies
between a quorum and its process group's rendezvous is noticed only when ``communicator()`` times out
(sooner if it served the store). Each quorum's rendezvous leaves a few small keys in members[0]'s store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch

from .base import CommError, Communicator, Pending
from .local import LocalCommunicator, LocalGroup

HEARTBEAT_TIMEOUT_MS = 800
"""A killed worker is dropped from the next quorum this long after its last heartbeat."""
HEARTBEAT_INTERVAL_S = 0.1
"""Well under the timeout, so that a few late beats (a busy core) never exclude a live worker."""
JOIN_TIMEOUT_MS = 600_000
"""How long a quorum waits for a live worker that has not asked yet: longer than any round."""
QUORUM_TICK_MS = 50
RENDEZVOUS_TIMEOUT_S = 30.0
"""How long a quorum's members wait for each other to set up its process group. They all ask for it
right after the quorum forms, so this is short: a member that died between the quorum and the setup
(SIGKILL, no socket to close yet) is noticed this long after, not after the collectives' timeout."""
_TOKEN_KEY = "_resist_token"


@dataclass(frozen=True)
class Quorum:
    """The workers that train together until the next quorum."""

    id: int
    """Unique and increasing per coordinator."""
    members: tuple[str, ...]
    """Worker ids, sorted; a member's rank is its index."""
    data: tuple[dict, ...]
    """Each member's ``data`` as it passed it to ``quorum()``, in ``members`` order."""

    def rank_of(self, worker_id: str) -> int:
        try:
            return self.members.index(worker_id)
        except ValueError:
            raise KeyError(f"worker {worker_id!r} is not in quorum {self.id} {list(self.members)}") from None

    @property
    def world_size(self) -> int:
        return len(self.members)

    def __hash__(self) -> int:  # the data dicts are not hashable; id and members identify a quorum
        return hash((self.id, self.members))


class Membership(ABC):
    """One worker's view of the elastic group."""

    worker_id: str

    @abstractmethod
    def quorum(self, data: dict, timeout: float) -> Quorum:
        """Block until the coordinator forms the next quorum including this worker. Raise CommError (one
        line) on timeout / coordinator unreachable."""

    @abstractmethod
    def communicator(self, quorum: Quorum, timeout: float) -> Communicator:
        """A fresh Communicator over exactly ``quorum.members`` (rank = index in members) for this
        quorum; its verbs raise CommError naming the verb when a member is gone. It serves until this
        membership's next ``communicator()`` (with torchft, that reconfigures the one process group, so
        the older communicator's verbs then raise CommError)."""

    def leave(self) -> None:
        """Clean exit: stop heartbeats, close stores/PGs."""


def _json_copy(data: dict) -> dict:
    """``data`` as the coordinator hands it back (a JSON round trip), and a clear error if it cannot."""
    if not isinstance(data, dict):
        raise TypeError(f"quorum data must be a dict, got {type(data).__name__}")
    try:
        return json.loads(json.dumps(data))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"quorum data must be JSON-able: {exc}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- torchft ---------------------------------------------------------------------------------------
def _torchft():
    """torchft's native module, imported on first use so that ``import resist`` works without it."""
    # The Lighthouse and its clients log every quorum tick at INFO; keep a user's own choice.
    os.environ.setdefault("RUST_LOG", "warn")
    try:
        from torchft import _torchft
    except ImportError as exc:
        raise ImportError("elastic training needs torchft: pip install 'resist[elastic]'") from exc
    return _torchft


def start_lighthouse(bind: str = "[::]:0", min_workers: int = 1, join_timeout_ms: int = JOIN_TIMEOUT_MS,
                     heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS, quorum_tick_ms: int = QUORUM_TICK_MS):
    """Start a torchft Lighthouse in this process; the returned server has ``.address()`` (e.g.
    ``http://host:port``) and ``.shutdown()``. The defaults drop a killed worker about 1 s after its
    death, but wait up to ``join_timeout_ms`` for a live one that is still finishing its round (see the
    module docstring for the rules)."""
    if min_workers < 1:
        raise ValueError(f"min_workers must be >= 1, got {min_workers}")
    return _torchft().LighthouseServer(bind=bind, min_replicas=min_workers, join_timeout_ms=join_timeout_ms,
                                       quorum_tick_ms=quorum_tick_ms, heartbeat_timeout_ms=heartbeat_timeout_ms)


def check_lighthouse(address: str, timeout: float = 5.0) -> None:
    """CommError with one line unless something listens at ``address`` (HOST:PORT or a URL): checked
    before a worker writes anything, so that a mistyped address leaves no run folder behind."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout):
            pass
    except (OSError, ValueError):
        raise CommError(f"no resist lighthouse at {address} (start one with `resist lighthouse`)") from None


class TorchftMembership(Membership):
    """A worker process in a group coordinated by a torchft Lighthouse."""

    def __init__(self, lighthouse_addr: str, worker_id: str, host: str = "127.0.0.1",
                 connect_timeout: float = 5.0, setup_timeout: float = RENDEZVOUS_TIMEOUT_S) -> None:
        """``lighthouse_addr``: ``http://host:port`` (as ``.address()`` gives it) or ``host:port``.
        Connects to the Lighthouse and heartbeats once (an unreachable one raises :class:`CommError`
        within ``connect_timeout``), serves a TCPStore for rendezvous and keeps heartbeating from a
        daemon thread until :meth:`leave`."""
        from torch.distributed import TCPStore

        ft = _torchft()
        # Imported now, before heartbeating starts: a heavy import later could hold the GIL long enough
        # to delay the heartbeat thread.
        from torchft.process_group import ProcessGroupGloo

        self._pg_class = ProcessGroupGloo
        self.worker_id = worker_id
        self.lighthouse_addr = lighthouse_addr
        # torchft's client wants a URL; HOST:PORT is what people type.
        self._url = lighthouse_addr if "://" in lighthouse_addr else f"http://{lighthouse_addr}"
        self.host = host
        self._connect_timeout = timedelta(seconds=connect_timeout)
        self._token = secrets.token_hex(8)  # tells two processes that claim the same id apart
        self._setup_timeout = setup_timeout
        try:
            self._client = ft.LighthouseClient(self._url, self._connect_timeout)
            self._client.heartbeat(worker_id, timeout=self._connect_timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise CommError(f"no resist lighthouse at {lighthouse_addr} (start one with `resist lighthouse`)") \
                from exc
        self._store = TCPStore(host, 0, is_master=True, wait_for_workers=False)
        self._store_address = f"{host}:{self._store.port}"
        self._stores: dict[str, str] = {}
        """Each member's rendezvous store in the last quorum (the Quorum carries only the members' data)."""
        self._pg = None
        self._pg_quorum: int | None = None
        """The quorum whose group ``_pg`` is, until the group is aborted."""
        self._stop = threading.Event()
        self._heartbeat_error: str | None = None
        self._beats = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                       name=f"resist-heartbeat-{worker_id}")
        self._beats.start()

    def _heartbeat_loop(self) -> None:
        # A client of its own: the main thread's may be blocked in a long quorum request.
        client = None
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                client = client or _torchft().LighthouseClient(self._url, self._connect_timeout)
                client.heartbeat(self.worker_id, timeout=self._connect_timeout)
                self._heartbeat_error = None
            except (RuntimeError, TimeoutError) as exc:  # the Lighthouse restarting: keep trying
                client, self._heartbeat_error = None, _first_line(exc)

    def quorum(self, data: dict, timeout: float) -> Quorum:
        if self._stop.is_set():
            raise CommError(f"worker {self.worker_id} has left")
        payload = _json_copy(data)
        payload[_TOKEN_KEY] = self._token
        try:
            q = self._client.quorum(replica_id=self.worker_id, timeout=timedelta(seconds=timeout), address="",
                                    store_address=self._store_address, step=int(payload.get("step", 0)),
                                    world_size=1, shrink_only=False, data=payload)
        except TimeoutError:
            raise CommError(f"worker {self.worker_id}: no quorum within {timeout:g} s "
                            f"(lighthouse {self.lighthouse_addr})") from None
        except RuntimeError as exc:
            raise CommError(f"worker {self.worker_id}: quorum failed at lighthouse {self.lighthouse_addr}: "
                            f"{_first_line(exc)}") from None
        parts = sorted(q.participants, key=lambda p: p.replica_id)
        mine = next(p for p in parts if p.replica_id == self.worker_id)
        if (mine.data or {}).get(_TOKEN_KEY) != self._token:
            raise CommError(f"worker id {self.worker_id!r} is already used by another live process; "
                            f"give each worker a unique id")
        self._stores = {p.replica_id: p.store_address for p in parts}
        datas = []
        for p in parts:
            d = dict(p.data or {})
            d.pop(_TOKEN_KEY, None)
            datas.append(d)
        return Quorum(id=q.created.seconds * 1_000_000_000 + q.created.nanos,
                      members=tuple(p.replica_id for p in parts), data=tuple(datas))

    def communicator(self, quorum: Quorum, timeout: float) -> Communicator:
        rank = quorum.rank_of(self.worker_id)
        if self._stop.is_set():
            raise CommError(f"worker {self.worker_id} has left")
        setup = timedelta(seconds=min(timeout, self._setup_timeout))
        if self._pg is None:
            self._pg = self._pg_class(timeout=setup)
        self._pg.set_timeout(setup)  # the group's default: its setup; each verb passes the full timeout
        # members[0]'s store, a prefix per quorum: successive quorums never see each other's keys.
        store = f"{self._stores[quorum.members[0]]}/resist/q{quorum.id}"
        self._pg_quorum = None
        try:
            # configure() aborts the previous quorum's group, so a stale communicator cannot hang on it.
            self._pg.configure(store, self.worker_id, rank, quorum.world_size, quorum_id=quorum.id)
        except Exception as exc:  # noqa: BLE001 - store and gloo errors come as several types
            self._pg.abort(errored=False)
            raise CommError(f"rank {rank}: joining quorum {quorum.id} {list(quorum.members)} failed: "
                            f"{_first_line(exc)}") from exc
        self._pg_quorum = quorum.id
        return TorchftCommunicator(self, rank, quorum, timeout)

    def _abort(self, quorum_id: int) -> None:
        """Abort the group of quorum ``quorum_id`` if it is still the current one."""
        if self._pg is not None and self._pg_quorum == quorum_id:
            self._pg_quorum = None
            self._pg.abort()

    def leave(self) -> None:
        self._stop.set()
        if self._beats.is_alive() and self._beats is not threading.current_thread():
            self._beats.join(5)
        if self._pg is not None:
            self._pg.abort(errored=False)
            self._pg, self._pg_quorum = None, None
        self._store = None


class TorchftCommunicator(Communicator):
    """The five verbs on a torchft ``ProcessGroupGloo`` configured for one quorum.

    The first error aborts the process group: that closes this rank's connections, so peers waiting on
    it fail at once instead of after the timeout, and every later verb fails too (the group is gone).
    """

    def __init__(self, membership: TorchftMembership, rank: int, quorum: Quorum, timeout: float) -> None:
        super().__init__(rank, quorum.world_size)
        self._membership = membership
        self.quorum = quorum
        self._timeout = timedelta(seconds=timeout)
        """Each verb's (the group's own default is its setup's, RENDEZVOUS_TIMEOUT_S)."""

    def _group(self, verb: str):
        """The configured group, unless it was aborted or reconfigured for another quorum since."""
        m = self._membership
        if m._pg is None or m._pg_quorum != self.quorum.id:
            raise CommError(f"rank {self.rank}: {verb} failed: the group of quorum {self.quorum.id} is gone "
                            f"(aborted after an error, or replaced by a later quorum)")
        return m._pg

    @contextlib.contextmanager
    def _guard(self, verb: str) -> Iterator[None]:
        try:
            yield
        except CommError:
            raise
        except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError and friends
            self._membership._abort(self.quorum.id)
            raise CommError(f"rank {self.rank}: {verb} failed: {_first_line(exc)}") from exc

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        self._start_all_reduce(tensor)()

    def _start_all_reduce(self, tensor: torch.Tensor):
        """Start a sum over the ranks; the returned function waits for it and copies the result back."""
        from torch.distributed.distributed_c10d import AllreduceOptions, ReduceOp

        staged = tensor if tensor.is_contiguous() else tensor.contiguous()
        opts = AllreduceOptions()
        opts.reduceOp = ReduceOp.SUM
        opts.timeout = self._timeout
        with self._guard("all_reduce"):
            work = self._group("all_reduce").allreduce([staged], opts)

        def finish() -> None:
            with self._guard("all_reduce"):
                work.wait()
            if staged is not tensor:
                tensor.copy_(staged)

        return finish

    def all_reduce_async(self, tensor: torch.Tensor, average: bool = False) -> Pending:
        if self.world_size == 1:
            return super().all_reduce_async(tensor, average)
        self._count_all_reduce(tensor)
        finish = self._start_all_reduce(tensor)

        def done() -> None:
            finish()
            if average:
                self._divide(tensor)

        return Pending(done)

    def _broadcast(self, tensor: torch.Tensor, src: int) -> None:
        from torch.distributed.distributed_c10d import BroadcastOptions

        staged = tensor if tensor.is_contiguous() else tensor.contiguous()
        opts = BroadcastOptions()
        opts.rootRank = src
        opts.timeout = self._timeout
        with self._guard("broadcast"):
            self._group("broadcast").broadcast([staged], opts).wait()
        if staged is not tensor:
            tensor.copy_(staged)

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        from torch.distributed.distributed_c10d import AllgatherOptions

        staged = tensor.contiguous()
        out = [torch.empty_like(staged) for _ in range(self.world_size)]
        with self._guard("all_gather"):
            opts = AllgatherOptions()
            opts.timeout = self._timeout
            self._group("all_gather").allgather([out], [staged], opts).wait()
        return out

    def _exchange(self, sends, recvs) -> None:
        # The k-th message between a pair (in list order) travels under tag k, so that matching never
        # depends on the order gloo happens to post them in.
        works, copies, seen = [], [], {}
        with self._guard("exchange"):
            group = self._group("exchange")
            for dst, t in sends:
                tag = seen[("to", dst)] = seen.get(("to", dst), -1) + 1
                works.append(group.send([t.contiguous()], dst, tag))
            for src, buf in recvs:
                tag = seen[("from", src)] = seen.get(("from", src), -1) + 1
                staged = buf if buf.is_contiguous() else torch.empty_like(buf, memory_format=torch.contiguous_format)
                works.append(group.recv([staged], src, tag))
                if staged is not buf:
                    copies.append((buf, staged))
            for work in works:
                work.wait(self._timeout)
        for buf, staged in copies:
            buf.copy_(staged)

    def _barrier(self) -> None:
        from torch.distributed.distributed_c10d import BarrierOptions

        with self._guard("barrier"):
            opts = BarrierOptions()
            opts.timeout = self._timeout
            self._group("barrier").barrier(opts).wait()


# --- in-process twin -------------------------------------------------------------------------------
class _ThreadCommunicator(LocalCommunicator):
    """A :class:`LocalCommunicator` for elastic threads, which run side by side without the device token:
    a worker that dies holding the token, or a group that is abandoned, could otherwise block its peers.
    Sums still run in rank order, so results stay deterministic."""

    def take_token(self) -> None:
        pass

    def give_token(self) -> None:
        pass

    def _sync(self) -> None:
        # A collective of an aborted group fails at once: a worker that died (or any member after a
        # death) must not complete a barrier the others are still counting on.
        if self.group.failed_rank is not None:
            raise self._failure()
        super()._sync()

    def _exchange(self, sends, recvs) -> None:
        if self.group.failed_rank is not None:
            raise self._failure()
        super()._exchange(sends, recvs)

    @contextlib.contextmanager
    def _off_device(self) -> Iterator[None]:
        # No token handoffs to measure a stall from: a wait times out ``timeout`` after the latest arrival.
        self.group.last_handoff = time.monotonic()
        yield


class LocalCoordinator:
    """The Lighthouse's twin for workers that are threads of one process.

    Same rules, without heartbeats or a join timeout: a worker is live from its :class:`LocalMembership`'s
    construction until it is killed or leaves. A quorum forms, of every live worker that has asked, when
    every member of the previous quorum has asked (fast quorum), or when every live worker has asked and
    there are at least ``min_workers`` of them. So a joiner waits for the members' next round boundary.
    """

    _KEEP_GROUPS = 4  # groups of recent quorums, for members that call communicator() late

    def __init__(self, min_workers: int = 1) -> None:
        if min_workers < 1:
            raise ValueError(f"min_workers must be >= 1, got {min_workers}")
        self.min_workers = min_workers
        self._cond = threading.Condition()
        self._live: dict[str, LocalMembership] = {}
        self._asking: dict[str, dict] = {}
        self._delivered: dict[str, Quorum] = {}
        self._previous: tuple[str, ...] | None = None
        self._next_id = 1
        self._groups: dict[int, tuple[Quorum, LocalGroup]] = {}

    def live(self) -> list[str]:
        with self._cond:
            return sorted(self._live)

    def _register(self, member: "LocalMembership") -> None:
        with self._cond:
            if member.worker_id in self._live:
                raise CommError(f"worker id {member.worker_id!r} is already used by another live worker; "
                                f"give each worker a unique id")
            self._live[member.worker_id] = member

    def _check_live(self, member: "LocalMembership") -> None:
        if self._live.get(member.worker_id) is not member:
            raise CommError(f"worker {member.worker_id} was {member.gone or 'removed'}")

    def _quorum(self, member: "LocalMembership", data: dict, timeout: float) -> Quorum:
        wid = member.worker_id
        deadline = time.monotonic() + timeout
        with self._cond:
            self._check_live(member)
            self._delivered.pop(wid, None)
            self._asking[wid] = data
            self._try_form()
            while wid not in self._delivered:
                left = deadline - time.monotonic()
                if self._live.get(wid) is not member or left <= 0:
                    waiting = sorted(set(self._live) - set(self._asking))
                    self._asking.pop(wid, None)
                    self._check_live(member)
                    raise CommError(f"worker {wid}: no quorum within {timeout:g} s (waiting for {waiting})")
                self._cond.wait(left)
            return self._delivered.pop(wid)

    def _try_form(self) -> None:
        """With the lock held: form the next quorum if the rules allow it."""
        asked = set(self._asking) & set(self._live)
        if not asked:
            return
        fast = self._previous is not None and set(self._previous) <= asked
        if not fast and (asked != set(self._live) or len(asked) < self.min_workers):
            return
        members = tuple(sorted(asked))
        q = Quorum(id=self._next_id, members=members, data=tuple(self._asking.pop(m) for m in members))
        self._next_id += 1
        self._previous = members
        self._groups[q.id] = (q, LocalGroup(len(members)))
        for old in sorted(self._groups)[:-self._KEEP_GROUPS]:
            del self._groups[old]
        for m in members:
            self._delivered[m] = q
        self._cond.notify_all()

    def _group(self, member: "LocalMembership", quorum: Quorum) -> LocalGroup:
        with self._cond:
            self._check_live(member)
            if quorum.id not in self._groups:
                raise CommError(f"worker {member.worker_id}: quorum {quorum.id} is too old")
            return self._groups[quorum.id][1]

    def _remove(self, worker_id: str, how: str, abort: bool) -> None:
        with self._cond:
            member = self._live.pop(worker_id, None)
            if member is None:
                return
            member.gone = how
            self._asking.pop(worker_id, None)
            self._delivered.pop(worker_id, None)
            if abort:
                # Peers blocked in a collective with the dead worker fail now, not after the timeout.
                for q, group in self._groups.values():
                    if worker_id in q.members:
                        group.abort(q.rank_of(worker_id))
            self._try_form()
            self._cond.notify_all()

    def kill(self, worker_id: str) -> None:
        """``worker_id`` dies: it leaves the live set, and the groups it belongs to are aborted."""
        self._remove(worker_id, "killed", abort=True)


class LocalMembership(Membership):
    """A worker thread's membership in a :class:`LocalCoordinator`'s group."""

    def __init__(self, coordinator: LocalCoordinator, worker_id: str) -> None:
        self.coordinator = coordinator
        self.worker_id = worker_id
        self.gone: str | None = None
        """``"killed"`` or ``"left"`` once this worker is out."""
        coordinator._register(self)

    def quorum(self, data: dict, timeout: float) -> Quorum:
        return self.coordinator._quorum(self, _json_copy(data), timeout)

    def communicator(self, quorum: Quorum, timeout: float) -> Communicator:
        rank = quorum.rank_of(self.worker_id)
        group = self.coordinator._group(self, quorum)
        group.timeout = timeout
        return _ThreadCommunicator(group, rank)

    def die(self) -> None:
        """Simulate this worker's death (as ``coordinator.kill``)."""
        self.coordinator.kill(self.worker_id)

    def leave(self) -> None:
        self.coordinator._remove(self.worker_id, "left", abort=False)


__all__ = ["Quorum", "Membership", "start_lighthouse", "TorchftMembership", "TorchftCommunicator",
           "LocalCoordinator", "LocalMembership", "HEARTBEAT_TIMEOUT_MS", "JOIN_TIMEOUT_MS"]
