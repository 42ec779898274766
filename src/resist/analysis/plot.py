"""Score curves of run folders (paper Figs. 4, 5, 8): the task's headline score (test accuracy; a
language model's bits per byte) against parallel-equivalent time and against the data each worker sent,
one line per run, read only from ``metrics.jsonl`` (and ``config.json`` / ``summary.json`` for the task
and the default label).

matplotlib is an optional extra (``pip install 'resist[plot]'``), imported only when a plot is drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .projection import cumulative_sent

REQUIRED = ("round", "step", "compute_s", "time_s", "sent_bytes")


@dataclass(frozen=True)
class Headline:
    """A task's headline score as metrics.jsonl records it. Kept here rather than taken from
    ``resist.tasks`` so that reading a run folder needs no torch; a test holds the two in step."""

    key: str  # the metrics.jsonl field
    name: str  # in words, for axes and tables
    unit: str
    higher_is_better: bool

    def format(self, value: float) -> str:
        return f"{value:.2f}%" if self.unit == "%" else f"{value:.4f}"


HEADLINES = {"classification": Headline("test_acc", "test accuracy", "%", True),
             "lm": Headline("test_bpb", "test bits per byte", "bits/byte", False),
             "detection": Headline("test_loss", "test loss (YOLOv2)", "loss", False)}


@dataclass
class Run:
    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] | None  # None when config.json is missing or unreadable
    task: str = "classification"

    @property
    def algo(self) -> str | None:
        return (self.config or {}).get("algo", {}).get("name")

    @property
    def headline(self) -> Headline:
        return HEADLINES[self.task]

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get(self.headline.key) is not None]

    def best(self) -> float | None:
        """The best headline score over the evaluated rounds (None before the first evaluation)."""
        scores = [r[self.headline.key] for r in self.evaluated]
        if not scores:
            return None
        return max(scores) if self.headline.higher_is_better else min(scores)

    def default_label(self) -> str:
        if self.config is None:
            return self.path.name
        workers = self.config.get("algo", {}).get("workers", len(self.rows[-1]["sent_bytes"]) if self.rows else "?")
        return f"{self.algo} S={workers}"


def read_run(run_dir: str | Path, need_eval: bool = False) -> Run:
    """A run folder's metrics (checked line by line) and config; ``ValueError`` naming the file otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run folder (no such directory)")
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not valid JSON ({e.msg}); the file is corrupt") from None
            missing = [k for k in REQUIRED if k not in row] if isinstance(row, dict) else list(REQUIRED)
            if missing or not isinstance(row["sent_bytes"], list):
                what = ", ".join(missing) or "a sent_bytes list"
                raise ValueError(f"{path} line {n} is not a metrics row (missing {what})")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no rounds")
    config = _read_config(run_dir / "config.json")
    run = Run(run_dir, rows, config, _task(run_dir, config, rows))
    if need_eval and not run.evaluated:
        raise ValueError(f"{path} has no evaluated round (no {run.headline.key}); nothing to plot")
    return run


def _task(run_dir: Path, config: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    """The run's task: config.json says it; a run folder without one (copied by hand, or from before
    the LM task) is told by summary.json's best score, else by what its rows recorded."""
    data = (config or {}).get("data")
    task = data.get("task") if isinstance(data, dict) else None
    if task is None:
        summary = _read_config(run_dir / "summary.json") or {}
        if "best_bpb" in summary or any("test_bpb" in r for r in rows):
            task = "lm"
        elif "best_test_loss" in summary or any("map50" in r for r in rows):
            task = "detection"
        else:
            task = "classification"
    if task not in HEADLINES:
        raise ValueError(f"{run_dir / 'config.json'} has task {task!r}, which plot/project cannot read; "
                         f"known: {', '.join(HEADLINES)}")
    return task


def common_task(runs: Sequence[Run]) -> str:
    """The one task of ``runs``: their scores cannot share an axis or a column otherwise."""
    tasks = dict.fromkeys(r.task for r in runs)
    if len(tasks) > 1:
        which = ", ".join(f"{r.path} ({r.task})" for r in runs)
        raise ValueError(f"the runs have different tasks, whose scores cannot be compared: {which}; "
                         "give runs of one task")
    return next(iter(tasks), "classification")


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def labels_for(runs: Sequence[Run], labels: Sequence[str] | None = None) -> list[str]:
    """The given labels (one per run), else ``algo S=workers``, made unique with the folder name."""
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(f"--labels has {len(labels)} label(s) for {len(runs)} run folder(s)")
        return list(labels)
    out = [r.default_label() for r in runs]
    return [f"{label} ({r.path.name})" if out.count(label) > 1 else label for label, r in zip(out, runs)]


def default_output(run_dirs: Sequence[str | Path], task: str = "classification") -> Path:
    name = "bits_per_byte.png" if task == "lm" else "accuracy.png"
    first = Path(run_dirs[0])
    return first / name if len(run_dirs) == 1 else first.parent / name


def plot_runs(runs: Sequence[Run], labels: Sequence[str], out: str | Path, log_bytes: bool = False,
              targets: Sequence[Any] = ()) -> Path:
    """Write the two-panel PNG to ``out``; returns its path. ``log_bytes``: the communication axis on a
    log scale (paper Fig. 8), for runs whose bytes differ by orders of magnitude (data parallel against
    compressed ResIST). ``targets`` (:class:`resist.analysis.target.Target`): a dotted line each, with
    a ring where each run first reaches it."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    except ImportError:
        raise ValueError("plotting needs matplotlib; install it with: pip install 'resist[plot]'") from None

    head = HEADLINES[common_task(runs)]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_t, ax_b = fig.subplots(1, 2, sharey=True)
    for i, (run, label) in enumerate(zip(runs, labels)):
        sent = dict(zip((id(r) for r in run.rows), cumulative_sent(run.rows)))
        ev = run.evaluated
        score = [r[head.key] for r in ev]
        # past the colour cycle's 10 colours, another line style keeps every run apart
        style = dict(marker="o" if i < 10 else "s", markersize=3 if len(ev) > 30 else 5, linewidth=1.6, label=label,
                     linestyle=("-", "--", ":")[i // 10 % 3])
        line, = ax_t.plot([r["time_s"] for r in ev], score, **style)
        ax_b.plot([sent[id(r)] / 1e6 for r in ev], score, **style)
        for t in targets:
            got = next((r for r in ev if (r[head.key] >= t.value if head.higher_is_better else r[head.key] <= t.value)), None)
            if got is not None:
                ring = dict(marker="o", markersize=11, markerfacecolor="none", color=line.get_color())
                ax_t.plot([got["time_s"]], [got[head.key]], **ring)
                ax_b.plot([sent[id(got)] / 1e6], [got[head.key]], **ring)
    for t in targets:
        for ax in (ax_t, ax_b):
            ax.axhline(t.value, color="0.4", linestyle=":", linewidth=1)
        ax_t.annotate(f"{t.name} {head.format(t.value)}", (0, t.value), xycoords=("axes fraction", "data"),
                      fontsize="x-small", color="0.3", va="bottom")
    title = head.name[0].upper() + head.name[1:]
    better = "higher is better" if head.higher_is_better else "lower is better"
    ax_t.set(title=f"{title} vs. time", xlabel="parallel-equivalent time (s)",
             ylabel=f"{head.name} ({head.unit}, {better})")
    ax_b.set(title=f"{title} vs. communication", xlabel="data sent per worker, cumulative (MB, max over workers)")
    if log_bytes:
        ax_b.set_xscale("log")
    for ax in (ax_t, ax_b):
        ax.grid(True, alpha=0.3)
        if ax.get_xlim()[1] > 0 and ax.get_xscale() == "linear":
            ax.set_xlim(left=0)
    # the curves end where the score is best: the legend goes in the corner they leave free
    ax_b.legend(loc="lower right" if head.higher_is_better else "upper right", fontsize="small")
    subtitle = _subtitle(runs)
    if subtitle:
        fig.suptitle(subtitle)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, format="png")
    except OSError as e:
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def _subtitle(runs: Sequence[Run]) -> str:
    """What the runs share (model, dataset), when they share it."""
    parts = []
    for section, key in (("model", "name"), ("data", "dataset")):
        values = {(r.config or {}).get(section, {}).get(key) for r in runs}
        if len(values) == 1 and None not in values:
            parts.append(str(values.pop()))
    return " on ".join(parts)
