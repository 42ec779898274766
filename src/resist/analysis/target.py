"""Time and bytes to a target score: runs compared at equal accuracy, not at equal epochs.

ResIST's claim is that it reaches local SGD's accuracy sooner and with fewer bytes. A comparison of
best scores reached at different times says nothing about that; this module finds, for each run, the
first evaluation at least as good as a target and reads off what it took to get there:

* parallel-equivalent time (``time_s``: per round the slowest worker's compute plus the
  synchronization), and wall time (``elapsed_s``, evaluations included) where recorded;
* bytes sent per worker (the worker that sent the most, cumulative);
* a deterministic cost: the steps the slowest worker took, each at that configuration's step time
  measured once on an idle core (``experiments/micro/step_breakdown.py``), so that a ratio of two runs does not
  depend on what else the machine was doing while they trained.

Default targets: the lowest of the compared runs' best scores (every run reaches it), and local SGD's
final score less the headline's tolerance (0.5 point of accuracy), which a run that matches local SGD
reaches. Reads run folders only (no torch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..plan import whole_network_rounds
from ..registry import can
from .plot import Run
from .projection import cumulative_sent

#: How far from local SGD's final score still counts as matching it, in the headline's unit.
TOLERANCE = {"classification": 0.5, "lm": 0.01, "detection": 0.05}


@dataclass(frozen=True)
class Target:
    name: str  # how the tables call it
    value: float


@dataclass(frozen=True)
class Reached:
    """What a run took to first reach a target (at the end of the round whose evaluation reached it)."""

    round: int
    steps: int
    time_s: float  # parallel-equivalent
    wall_s: float | None  # since the run started, evaluations included (None: not recorded)
    sent_bytes: int  # per worker (the worker that sent the most), cumulative
    cost_s: float | None  # deterministic: steps x measured step time (None: no step time known)


def better(run: Run, a: float, b: float) -> bool:
    """Whether score ``a`` is at least as good as ``b`` for the run's headline."""
    return a >= b if run.headline.higher_is_better else a <= b


def default_targets(runs: Sequence[Run]) -> list[Target]:
    """The lowest best score of the runs, and the first local SGD run's final score less the
    tolerance (when a local SGD run is compared)."""
    head = runs[0].headline
    bests = [r.best() for r in runs if r.best() is not None]
    out = []
    if bests:
        worst = min(bests) if head.higher_is_better else max(bests)
        out.append(Target("lowest best", worst))
    lsgd = next((r for r in runs if r.algo == "local_sgd" and r.evaluated), None)
    if lsgd is not None:
        final = lsgd.evaluated[-1][head.key]
        tol = TOLERANCE[lsgd.task]
        out.append(Target(f"local SGD final {'-' if head.higher_is_better else '+'} {tol:g}",
                          final - tol if head.higher_is_better else final + tol))
    return out


def time_to(run: Run, target: float, cost: "StepCost | None" = None) -> Reached | None:
    """The first evaluation of ``run`` at least as good as ``target`` (None: never reached)."""
    sent = cumulative_sent(run.rows)
    costs = cost.cumulative(run) if cost is not None else None
    for i, row in enumerate(run.rows):
        score = row.get(run.headline.key)
        if score is not None and better(run, score, target):
            return Reached(round=int(row["round"]), steps=int(row["step"]), time_s=float(row["time_s"]),
                           wall_s=float(row["elapsed_s"]) if "elapsed_s" in row else None,
                           sent_bytes=sent[i], cost_s=None if costs is None else costs[i])
    return None


@dataclass(frozen=True)
class StepCost:
    """One step's time for a model and width as a function of the partitionable blocks a worker holds:
    the whole model's step less, per block left out, the measured cost of one block of the partitioned
    section (``experiments/micro/step_breakdown.py``: medians of interleaved repetitions on one idle core)."""

    full_s: float
    per_block_s: float
    blocks: int  # partitionable blocks of the whole model
    source: str

    def step_s(self, held: int) -> float:
        return self.full_s - (self.blocks - held) * self.per_block_s

    def held_by_slowest(self, run: Run) -> list[int]:
        """Partitionable blocks the busiest worker held, per row: all of them for local SGD, data
        parallel and ResIST's whole-network rounds (warm-up, cool-down); else the largest share of a
        plan (blocks dealt round robin, at least ``min_depth``)."""
        algo = (run.config or {}).get("algo", {})
        workers, name = int(algo.get("workers", 1)), algo.get("name")
        if not can(name, "partitions"):
            return [self.blocks] * len(run.rows)
        dealt = min(self.blocks, max(math.ceil(self.blocks / workers), int(algo.get("min_depth", 0))))
        out = []
        for row in run.rows:
            spe = round(row["step"] / row["epoch"]) if row.get("epoch") else None
            whole = can(name, "uses_warmup") and spe is not None and _whole_round(run, algo, int(row["round"]), spe)
            out.append(self.blocks if whole else dealt)
        return out

    def cumulative(self, run: Run) -> list[float]:
        """Deterministic seconds so far, per row: each round's steps at the busiest worker's step time."""
        out, total, prev_step = [], 0.0, 0
        for row, held in zip(run.rows, self.held_by_slowest(run)):
            steps = int(row["step"]) - prev_step
            if steps < 0:  # counters restarted (a resume on another worker count): a round's worth
                steps = int(algo_iters(run))
            total += steps * self.step_s(held)
            prev_step = int(row["step"])
            out.append(total)
        return out


def algo_iters(run: Run) -> int:
    return int((run.config or {}).get("algo", {}).get("local_iters", 1))


def _whole_round(run: Run, algo: dict[str, Any], round_: int, steps_per_epoch: float) -> bool:
    """Whether ResIST trained the whole network in ``round_`` (warm-up or cool-down), by the trainer's rule."""
    epochs = float((run.config or {}).get("optim", {}).get("epochs", 0.0))
    warm, cool = whole_network_rounds(epochs, steps_per_epoch, int(algo.get("local_iters", 1)),
                                      float(algo.get("warmup_epochs", 0.0)), float(algo.get("cooldown_epochs", 0.0)))
    return round_ < warm or (cool is not None and round_ >= cool)


def load_step_costs(path: str | Path) -> dict[tuple[str, float], StepCost]:
    """Step costs per (model, width) from a ``experiments/micro/step_breakdown.py`` JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = _flag(data["command"], "--model", "paper_resnet101")
        out = {}
        for table in data["tables"]:
            full = next(r for r in table["rows"] if r["config"] == "full")
            part = max(table["sections"], key=lambda s: s["skippable_blocks"])  # the partitioned section
            out[(model, float(table["width"]))] = StepCost(
                full["median_s"]["total"], part["per_block_ms"] / 1e3, int(full["blocks_held"]),
                f"{path.name} ({data['env'].get('library', '?')}, {data['env'].get('date', '?')})")
        return out
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
        raise ValueError(f"{path} is not a step_breakdown result ({type(e).__name__}: {e})") from None


def _flag(command: str, flag: str, default: str) -> str:
    words = command.split()
    return words[words.index(flag) + 1] if flag in words[:-1] else default


def cost_for(run: Run, costs: dict[tuple[str, float], StepCost]) -> StepCost | None:
    """The step cost of the run's model and width, when it was measured and matches the run's model
    (same number of partitionable blocks, the batch size measured)."""
    cfg = run.config or {}
    key = (cfg.get("model", {}).get("name"), float(cfg.get("model", {}).get("width", 0.0)))
    cost = costs.get(key)
    summary = _summary(run.path)
    if cost is None or len(summary.get("scaled_blocks", [])) != cost.blocks:
        return None
    return cost


def _summary(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def format_targets(runs: Sequence[Run], labels: Sequence[str], targets: Sequence[Target],
                   costs: Sequence[StepCost | None] | None = None) -> str:
    """One table per target: each run's time, wall time, bytes and deterministic cost to reach it, and
    its ratio to the first run's (>1: the run got there sooner or with fewer bytes)."""
    head = runs[0].headline
    costs = list(costs) if costs is not None else [None] * len(runs)
    lines = []
    for t in targets:
        reached = [time_to(r, t.value, c) for r, c in zip(runs, costs)]
        ref = reached[0]
        lines.append(f"To {t.name} = {head.format(t.value)} ({head.name}; first evaluation at least as good):")
        cells = [["run", "round", "time s", "wall s", "MB sent/worker", "cost s",
                  "time vs first", "bytes vs first", "cost vs first"]]
        for label, got in zip(labels, reached):
            if got is None:
                cells.append([label, "not reached"] + [""] * 7)
                continue
            cells.append([label, str(got.round), f"{got.time_s:.1f}",
                          "-" if got.wall_s is None else f"{got.wall_s:.1f}", f"{got.sent_bytes / 1e6:.2f}",
                          "-" if got.cost_s is None else f"{got.cost_s:.1f}",
                          _ratio(ref and ref.time_s, got.time_s), _ratio(ref and ref.sent_bytes, got.sent_bytes),
                          _ratio(ref and ref.cost_s, got.cost_s)])
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                  for row in cells]
    lines.append("(NNx vs first): the first run's figure / this run's, both at the target (>1: sooner, fewer bytes); "
                 "cost: steps x step time measured on an idle core (--step-costs), '-' where none was measured")
    return "\n".join(lines)


def _ratio(ref: float | None, value: float | None) -> str:
    if not ref or not value:
        return "-"
    return f"{ref / value:.2f}x"
