"""``--runtime elastic`` on one machine: a lighthouse and ``--workers`` worker processes that may die
and come back while the run goes on (tests, the soak benchmark, users trying elastic training).

The launcher is a supervisor, not a participant: the workers agree on everything through the
lighthouse. It can kill a worker (SIGKILL, as a machine that vanishes) and start a worker under a
name, fresh or in the place of a dead one (the soak benchmark does both); the run ends when every
worker has exited, and fails only if none finished it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..comm import CommError
from ..config import Config


def _worker(cfg_dict: dict, out: str, name: str, lighthouse: str, dataset, results) -> None:
    """One worker process: joins the lighthouse as ``name`` and trains until the run ends."""
    import torch

    from ..comm.membership import TorchftMembership
    from .elastic import run_elastic_worker
    from .build import load_data, setup_logging

    torch.set_num_threads(1)
    cfg = Config.from_dict(cfg_dict)
    setup_logging()
    try:
        data = dataset if dataset is not None else load_data(cfg)
        membership = TorchftMembership(lighthouse, name)
        summary = run_elastic_worker(membership, cfg, data, Path(out), write=True)
        results.put((name, os.getpid(), "ok", summary))
    except BaseException as e:  # reported to the launcher in one line; a traceback for debugging goes to stderr
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        results.put((name, os.getpid(), "error", f"{type(e).__name__}: {first}"))
        if not isinstance(e, (ValueError, CommError)):
            traceback.print_exc()


@dataclass
class ElasticLauncher:
    """A lighthouse and worker processes on this machine (:meth:`start`, :meth:`kill`, :meth:`wait`)."""

    cfg: Config
    out: Path
    dataset: Any = None
    """An in-memory dataset to hand each worker (tests); None: each loads its own from disk."""
    linger_s: float = 10.0
    """How long workers may go on after the run's summary is written (then they are stopped)."""
    procs: dict[str, mp.Process] = field(default_factory=dict)
    outcomes: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    started: list[mp.Process] = field(default_factory=list)
    """Every process started, replacements included."""
    reported: set[int] = field(default_factory=set)
    """Pids whose report has been taken."""

    def __post_init__(self) -> None:
        from ..comm.membership import start_lighthouse

        self.out.mkdir(parents=True, exist_ok=True)
        self.lighthouse = start_lighthouse(min_workers=self.cfg.run.min_workers)
        self.address = self.lighthouse.address()
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()

    def start(self, name: str) -> None:
        """Start worker ``name`` (a new one, or a dead one's replacement: it joins at the next round)."""
        if name in self.procs and self.procs[name].is_alive():
            raise ValueError(f"worker {name} is running")
        p = self.ctx.Process(target=_worker, args=(self.cfg.to_dict(), str(self.out), name, self.address,
                                                   self.dataset, self.results), name=f"resist-{name}", daemon=True)
        p.start()
        self.procs[name] = p
        self.started.append(p)

    def kill(self, name: str) -> float:
        """SIGKILL worker ``name`` (no clean exit: a machine lost); returns when it happened (time.time())."""
        p = self.procs[name]
        at = time.time()
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        return at

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.is_alive()]

    def collect(self, wait_for: int = 0, timeout: float = 30.0) -> None:
        """Take the workers' reports that have arrived, and block until ``wait_for`` more have (a report
        put just before its process exited may still be in the queue's pipe)."""
        got = 0
        while True:
            try:
                item = self.results.get(timeout=timeout) if got < wait_for else self.results.get_nowait()
            except queue.Empty:
                return
            name, pid, status, value = item
            self.reported.add(pid)
            self.outcomes.setdefault(name, []).append((status, value))
            got += 1

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for every worker to exit; the summary of the worker that wrote it. Raises CommError when
        no worker finished the run (the first error line of each)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finished_at = None
        while self.alive():
            self.collect()
            if finished_at is None and any(s == "ok" and v is not None for o in self.outcomes.values() for s, v in o):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > self.linger_s:
                for p in self.procs.values():  # a joiner that came after the end waits for a run that is over
                    p.kill()
                break
            if deadline is not None and time.monotonic() > deadline:
                for p in self.procs.values():
                    p.kill()
                raise CommError(f"elastic run did not end within {timeout:g} s")
            time.sleep(0.1)
        # Every process that exited normally reported (killed ones did not): wait for those reports.
        clean = [p for p in self.started if p.exitcode == 0 and p.pid not in self.reported]
        self.collect(wait_for=len(clean))
        summaries = [v for outs in self.outcomes.values() for s, v in outs if s == "ok" and v is not None]
        if summaries:
            return summaries[0]
        errors = [f"{n}: {v}" for n, outs in self.outcomes.items() for s, v in outs if s == "error"]
        raise CommError("elastic run failed: " + ("; ".join(errors) if errors else "every worker died"))

    def close(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
        self.lighthouse.shutdown()


def launch_elastic(cfg: Config, out: Path, dataset=None) -> dict[str, Any]:
    """``--runtime elastic`` without ``--lighthouse``: a local lighthouse and ``--workers`` workers named
    w0, w1, ...; returns the run's summary."""
    launcher = ElasticLauncher(cfg, out, dataset)
    try:
        for i in range(cfg.algo.workers):
            launcher.start(f"w{i}")
        return launcher.wait()
    finally:
        launcher.close()
