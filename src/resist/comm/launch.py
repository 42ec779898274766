"""Starting a torch.distributed world: local processes (:func:`spawn`) or under torchrun (:func:`run_from_env`).

:func:`spawn` is the multi-process twin of :func:`resist.comm.local.run_in_process`: it runs
``fn(comm, *args)`` on ``world_size`` processes and returns their results in rank order, and any failure
becomes one :class:`CommError` in the parent that names the rank at fault.

Design:

- Rendezvous: the parent hosts the ``TCPStore`` on a port the OS picks (or ``master_port``), so there
  is no window between choosing a free port and binding it, and no file to clean up.
- Results: each child pickles its result (or its error) itself and sends the bytes on its own pipe, so
  an unpicklable result is reported as an error of that rank, and nothing depends on the child staying
  alive after sending (as shared-memory tensor passing would).
- Failure detection: the parent waits on the pipes and the process sentinels together. A rank that
  raises, or dies, is the culprit. A rank that only reports a communication failure (timeout, peer
  gone) is a victim: the parent waits a short grace for the culprit to show itself, and otherwise names
  the ranks that neither finished nor failed as stuck. Survivors are terminated in every case.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .base import CommError
from .dist import DistCommunicator

from ..registry import BACKENDS
_GRACE_S = 3.0  # how long victims' reports may precede the culprit's (or the peers' own timeouts)
_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_backend() -> str:
    """``"nccl"`` if CUDA is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def check_backend(backend: str | None, world_size: int | None = None) -> str:
    """The backend to use (``None``: the default); ``ValueError`` with one line if it cannot run here,
    including NCCL with more local ranks (``world_size``) than GPUs."""
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA, which is not available here; use --backend gloo")
        if world_size is not None and world_size > torch.cuda.device_count():
            raise ValueError(f"backend 'nccl' needs one GPU per rank: {world_size} workers, "
                             f"{torch.cuda.device_count()} GPUs here; use fewer --workers, --backend gloo, "
                             "or --runtime inprocess")
    return backend


def check_port(port: int) -> None:
    """``ValueError`` with one line unless ``port`` can be listened on at 127.0.0.1 now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ValueError(f"cannot listen on port {port} (already in use?); choose another "
                             f"--master-port or leave it unset") from None


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for launchers that need one up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _die_with(parent: int) -> None:
    """End this rank as soon as the launcher ``parent`` is gone, however it went (SIGKILL included):
    a rank left behind would go on training and writing checkpoints, racing a resumed run.

    Linux kills us at once (PR_SET_PDEATHSIG); elsewhere, and as a second line, a thread polls the
    parent's pid twice a second."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # gone before the above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="resist-launcher-watch", daemon=True).start()


def _child(rank: int, world_size: int, port: int, backend: str, timeout: float,
           fn: Callable, args: tuple, conn: Connection, parent: int) -> None:
    _die_with(parent)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        delta = datetime.timedelta(seconds=timeout)
        extra = {}
        if backend == "nccl":
            torch.cuda.set_device(rank)
            # Eager communicator init: the first batch_isend_irecv then needn't involve every rank.
            extra["device_id"] = torch.device("cuda", rank)
        store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=delta)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=delta, **extra)
        result = fn(DistCommunicator(), *args)
        payload = pickle.dumps(("ok", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        with contextlib.suppress(OSError):  # the parent may be gone already
            # A ValueError is bad input (a config, a data file): the caller may report it as such.
            usage = isinstance(exc, ValueError)
            # An OSError's errno travels too: a full disk is said as such, not as a failed rank.
            conn.send_bytes(pickle.dumps(("error", isinstance(exc, CommError), _one_line(exc),
                                          traceback.format_exc(), usage,
                                          (exc.errno, " ".join(str(exc).split())) if isinstance(exc, OSError) else None)))
            conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # Exit at once: peers blocked on us see the connection drop instead of waiting for a timeout,
        # and we don't wait in backend destructors on peers that may be gone.
        os._exit(1)
    conn.send_bytes(payload)
    conn.close()
    dist.destroy_process_group()


def _death(rank: int, exitcode: int | None) -> str:
    if exitcode is None:
        return f"rank {rank} closed its result pipe without a result"
    if exitcode == 0:
        return f"rank {rank} exited (exit code 0) without returning a result"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        return f"rank {rank} died (exit code {exitcode} / signal {name})"
    return f"rank {rank} died (exit code {exitcode})"


def _failure(message: str, rank: int, tb: str | None = None, usage: bool = False,
             os_error: tuple[int, str] | None = None) -> CommError:
    err = CommError(message)
    err.rank = rank
    err.usage = usage  # the rank raised a ValueError: bad input rather than a failed peer
    err.os_error = os_error  # the rank raised an OSError: (errno, its message)
    if tb and hasattr(err, "add_note"):
        err.add_note(f"--- traceback in rank {rank} ---\n{tb.rstrip()}")
    return err


def _collect(procs: list, conns: list[Connection]) -> list:
    """Wait for every rank's result; raise the first failure as a :class:`CommError`."""
    results: list[Any] = [None] * len(procs)
    pending = set(range(len(procs)))  # ranks that neither finished nor failed
    # rank -> (summary, traceback) of a communication failure, in arrival order
    victims: dict[int, tuple[str, str]] = {}
    first_victim_at = None
    while pending:
        wait([conns[r] for r in pending] + [procs[r].sentinel for r in pending], timeout=0.5)
        for r in sorted(pending):
            alive = procs[r].is_alive()  # looked at first: what a child sent before exiting is then seen
            if not conns[r].poll():
                if not alive:
                    raise _failure(_death(r, procs[r].exitcode), r)
                continue
            try:
                msg = pickle.loads(conns[r].recv_bytes())
            except EOFError:  # the child is gone without a word
                procs[r].join(timeout=5.0)
                raise _failure(_death(r, procs[r].exitcode), r) from None
            pending.discard(r)
            if msg[0] == "ok":
                results[r] = msg[1]
                continue
            _, is_comm, summary, tb, usage, os_error = msg
            if not is_comm:
                raise _failure(f"rank {r} raised {summary}", r, tb, usage, os_error)
            victims[r] = (summary, tb)
            first_victim_at = first_victim_at or time.monotonic()
        if victims and pending and time.monotonic() - first_victim_at > _GRACE_S:
            stuck = sorted(pending)
            who = f"rank {stuck[0]}" if len(stuck) == 1 else "ranks " + ", ".join(map(str, stuck))
            v = next(iter(victims))  # the first to report is the likeliest cause
            raise _failure(f"{who} did not finish or fail (stuck?) while rank {v} failed: "
                           f"{victims[v][0]}", stuck[0], victims[v][1])
    if victims:
        v = next(iter(victims))  # the first to report is the likeliest cause
        raise _failure(f"rank {v} failed: {victims[v][0]}", v, victims[v][1])
    return results


def _stop(procs: list, patience: float) -> None:
    """Give the children ``patience`` seconds to exit, then SIGTERM, then SIGKILL."""
    for delay, stop in ((patience, None), (2.0, "terminate"), (None, "kill")):
        for p in procs:
            if stop and p.is_alive():
                getattr(p, stop)()
        deadline = None if delay is None else time.monotonic() + delay
        for p in procs:
            p.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def spawn(world_size: int, fn: Callable, args: tuple = (), backend: str | None = None,
          timeout: float = 1800.0, master_port: int | None = None) -> list:
    """Run ``fn(comm, *args)`` on ``world_size`` local processes; return their results in rank order.

    ``fn`` must be a picklable module-level function and its result picklable. ``timeout`` (seconds)
    bounds every collective: a rank that stops taking part makes its peers fail after about that long.
    Any failure raises a one-line :class:`CommError` in the parent naming the rank at fault (the rank
    that raised, died, or got stuck), after all children have been stopped.
    """
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    backend = check_backend(backend, world_size)
    try:
        store = dist.TCPStore("127.0.0.1", master_port or 0, world_size, is_master=True,
                              wait_for_workers=False, timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, OSError) as e:
        if master_port:
            raise ValueError(f"cannot listen on port {master_port} (already in use?); choose another "
                             f"--master-port or leave it unset") from None
        raise CommError(f"cannot start the rendezvous store: {_one_line(e)}") from None
    ctx = mp.get_context("spawn")
    procs: list = []
    conns: list[Connection] = []
    finished = False
    before = _stop_on_signals()
    try:
        for rank in range(world_size):
            reader, writer = ctx.Pipe(duplex=False)
            conns.append(reader)
            p = ctx.Process(target=_child, name=f"resist-rank{rank}",
                            args=(rank, world_size, store.port, backend, timeout, fn, tuple(args), writer, os.getpid()))
            p.start()
            procs.append(p)
            writer.close()  # so that a dead child shows as EOF on our end
        results = _collect(procs, conns)
        finished = True
        return results
    finally:
        # After success the children are only tearing down; after a failure, survivors go at once.
        _stop(procs, patience=10.0 if finished else 0.0)
        for c in conns:
            c.close()
        del store
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, which cannot be put back from here
                signal.signal(sig, handler)


class Stopped(CommError):
    """The launcher was told to stop (SIGTERM, SIGHUP); its ranks have been stopped."""


def _stop_on_signals() -> dict[int, Any]:
    """Turn SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) into :class:`Stopped` while the
    ranks run, so that they are stopped before the launcher goes; the previous handlers, to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; the ranks still die with this process

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(f"stopped by {signal.Signals(signum).name}; the ranks were stopped with it")

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _read_env() -> tuple[int, int, int]:
    missing = [k for k in _ENV_VARS if not os.environ.get(k)]
    if missing:
        raise ValueError(f"run_from_env needs {', '.join(missing)} in the environment (start it with torchrun)")
    try:
        rank, world_size, local_rank, port = (int(os.environ[k]) for k in
                                              ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers") from None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if not 0 <= local_rank < min(local_world, world_size):
        raise ValueError(f"LOCAL_RANK={local_rank} is not in [0, {min(local_world, world_size)})")
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={port} is not a TCP port")
    return rank, world_size, local_rank


def run_from_env(fn: Callable, args: tuple = (), backend: str | None = None, timeout: float = 1800.0) -> Any:
    """Under torchrun: join the world described by the environment, return ``fn(comm, *args)`` here.

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (ValueError if missing or
    inconsistent); under NCCL, uses GPU ``LOCAL_RANK``. The process group is destroyed afterwards.
    """
    rank, world_size, local_rank = _read_env()
    backend = check_backend(backend)
    extra = {}
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(local_rank)
        extra["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout), **extra)
    try:
        return fn(DistCommunicator(), *args)
    finally:
        dist.destroy_process_group()
