"""How many steps and rounds a run has, and where a checkpoint's progress lands in another run's
schedule (a resume, perhaps with another worker count)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..data import steps_per_epoch


@dataclass
class Schedule:
    """How many steps and rounds a run has (an epoch: ``optim.epoch_unit``)."""

    steps_per_epoch: int
    total_steps: int
    rounds: int

    @classmethod
    def of(cls, cfg: Config, n_train: int) -> "Schedule":
        spe = steps_per_epoch(n_train, cfg.algo.workers, cfg.data.batch_size)
        if cfg.optim.epoch_unit == "dataset":
            spe *= cfg.algo.workers
        total = max(1, math.ceil(cfg.optim.epochs * spe))
        rounds = math.ceil(total / cfg.algo.local_iters)
        if cfg.run.max_rounds is not None:
            rounds = min(rounds, cfg.run.max_rounds)
        return cls(spe, total, rounds)


@dataclass
class ResumePoint:
    """Where a checkpoint's run continues in this run's schedule (see :func:`resume_point_in`)."""

    round: int
    """The first round to train."""
    epochs_before: float
    """Epochs each worker's shard had been trained for when the checkpoint was written."""
    epoch: float
    """The epoch at which ``round`` begins in this schedule (equal to ``epochs_before`` when exact)."""
    workers_before: int
    note: str | None = None
    """One line for the log when the worker count changed."""


def resume_point_in(saved: dict[str, Any], cfg: Config, sched: Schedule, n_train: int) -> ResumePoint:
    """Map a checkpoint's progress onto this run's schedule.

    With the same worker count the run continues at the checkpoint's round. With another, steps per
    epoch change (each worker's shard is n / S), so progress carries over by epochs seen: the run
    continues at the round boundary nearest to that epoch (at most half a round off), and the schedule
    of learning-rate decays, being in fractions of the epochs, stays at the same epochs.
    """
    old = Config.from_dict(saved["config"])
    old_sched = Schedule.of(old.replace(**{"run.max_rounds": None}), n_train)
    done = saved.get("epoch")
    if done is None:  # checkpoints written before the epoch was recorded
        done = min(saved["round"] * old.algo.local_iters, old_sched.total_steps) / old_sched.steps_per_epoch
    if old.algo.workers == cfg.algo.workers:
        return ResumePoint(saved["round"], done, done, old.algo.workers)
    iters, spe = cfg.algo.local_iters, sched.steps_per_epoch
    full_rounds = math.ceil(sched.total_steps / iters)
    r = min(full_rounds, max(0, round(done * spe / iters)))
    at = min(r * iters, sched.total_steps) / spe
    note = (f"resuming with {cfg.algo.workers} workers instead of {old.algo.workers}: {done:.4g} of "
            f"{cfg.optim.epochs:g} epochs were trained; continuing at round {r} of {full_rounds}, epoch {at:.4g}")
    if abs(at - done) > 1e-9:
        note += (f" (a round boundary of the new schedule, so {abs(at - done):.3g} epochs are "
                 f"{'skipped' if at > done else 'trained twice'})")
    return ResumePoint(r, done, at, old.algo.workers, note)
