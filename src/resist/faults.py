"""Deterministic fault injection for tests and drills (in the spirit of torchft's EventInjector).

Faults are read from ``RESIST_FAULTS`` so that they reach spawned and torchrun-started workers alike:
``kind:rank=R[:round=T][:step=S][:seconds=X][:speed=V][:once=PATH]``, several separated by ``;``.
Kinds: ``kill`` (SIGKILL this process: a worker lost mid-round), ``raise`` (an exception), ``nan`` (the
step's loss becomes NaN), ``delay`` (sleep ``seconds``), ``hang`` (sleep for ever), ``slow`` (a worker
``speed`` times as fast as it is, 0 < V <= 1: after each training step it sleeps (1/V - 1) times what
the step took, so its measured compute time is that of a slower machine; the numbers it computes are
unchanged). A fault fires when rank, round and step (those given) match; with ``once=PATH`` it fires
only if PATH does not exist, and creates it, so that a restarted job runs clean.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ENV = "RESIST_FAULTS"
KINDS = ("kill", "raise", "nan", "delay", "hang", "slow")


class InjectedFault(RuntimeError):
    """Raised by a ``raise`` fault."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    round: int | None = None
    step: int | None = None
    seconds: float = 0.0
    speed: float = 1.0
    once: str | None = None

    def matches(self, rank: int, round_: int, step: int) -> bool:
        return ((rank == self.rank or self.rank == -1) and (self.round is None or round_ == self.round)
                and (self.step is None or step == self.step))


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, *fields = item.split(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}: unknown fault {kind!r}; choose one of: {', '.join(KINDS)}")
        kw: dict = {}
        for f in fields:
            key, _, value = f.partition("=")
            if key in ("rank", "round", "step"):
                kw[key] = int(value)
            elif key in ("seconds", "speed"):
                kw[key] = float(value)
            elif key == "once":
                kw[key] = value
            else:
                raise ValueError(f"{ENV}: unknown field {key!r} in {item!r}")
        if "rank" not in kw:
            raise ValueError(f"{ENV}: {item!r} needs rank=R")
        if kind == "slow" and not 0 < kw.get("speed", 0.0) <= 1:
            raise ValueError(f"{ENV}: {item!r} needs speed=V with 0 < V <= 1 (0.5: half as fast)")
        faults.append(Fault(kind, **kw))
    return faults


def from_env() -> list[Fault]:
    return parse(os.environ.get(ENV, ""))


def slowdown(faults: list[Fault], rank: int, round_: int, step: int) -> float:
    """How many times longer than it took this step must seem on ``rank`` (1: not slowed)."""
    factor = 1.0
    for f in faults:
        if f.kind == "slow" and f.matches(rank, round_, step):
            factor /= f.speed
    return factor


def fire(faults: list[Fault], rank: int, round_: int, step: int, kill=None) -> bool:
    """Carry out the faults due now; returns True when the current loss must become NaN. ``kill``: how a
    ``kill`` ends this worker (default: SIGKILL of this process; a simulated worker ends its thread)."""
    nan = False
    for f in faults:
        if f.kind == "slow" or not f.matches(rank, round_, step):
            continue
        if f.once:
            marker = Path(f.once)
            if marker.exists():
                continue
            marker.touch()
        if f.kind == "kill":
            if kill is not None:
                kill()
            os.kill(os.getpid(), signal.SIGKILL)
        elif f.kind == "raise":
            raise InjectedFault(f"injected fault on rank {rank} at round {round_}, step {step}")
        elif f.kind == "nan":
            nan = True
        elif f.kind == "delay":
            time.sleep(f.seconds)
        elif f.kind == "hang":
            while True:
                time.sleep(3600)
    return nan
