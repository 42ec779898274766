"""Accuracy curves of run folders (paper Figs. 4, 5, 8): test accuracy against parallel-equivalent
time and against the data each worker sent, one line per run, read only from ``metrics.jsonl`` (and
``config.json`` for the default label).

matplotlib is an optional extra (``pip install 'resist[plot]'``), imported only when a plot is drawn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .projection import cumulative_sent

REQUIRED = ("round", "step", "compute_s", "time_s", "sent_bytes")


@dataclass
class Run:
    path: Path
    rows: list[dict[str, Any]]
    config: dict[str, Any] | None  # None when config.json is missing or unreadable

    @property
    def algo(self) -> str | None:
        return (self.config or {}).get("algo", {}).get("name")

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("test_acc") is not None]

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
    run = Run(run_dir, rows, _read_config(run_dir / "config.json"))
    if need_eval and not run.evaluated:
        raise ValueError(f"{path} has no evaluated round (no test_acc); nothing to plot")
    return run


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


def default_output(run_dirs: Sequence[str | Path]) -> Path:
    first = Path(run_dirs[0])
    return first / "accuracy.png" if len(run_dirs) == 1 else first.parent / "accuracy.png"


def plot_runs(runs: Sequence[Run], labels: Sequence[str], out: str | Path, log_bytes: bool = False) -> Path:
    """Write the two-panel PNG to ``out``; returns its path. ``log_bytes``: the communication axis on a
    log scale (paper Fig. 8), for runs whose bytes differ by orders of magnitude (data parallel against
    compressed ResIST)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    except ImportError:
        raise ValueError("plotting needs matplotlib; install it with: pip install 'resist[plot]'") from None

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_t, ax_b = fig.subplots(1, 2, sharey=True)
    for i, (run, label) in enumerate(zip(runs, labels)):
        sent = dict(zip((id(r) for r in run.rows), cumulative_sent(run.rows)))
        ev = run.evaluated
        acc = [r["test_acc"] for r in ev]
        # past the colour cycle's 10 colours, another line style keeps every run apart
        style = dict(marker="o" if i < 10 else "s", markersize=3 if len(ev) > 30 else 5, linewidth=1.6, label=label,
                     linestyle=("-", "--", ":")[i // 10 % 3])
        ax_t.plot([r["time_s"] for r in ev], acc, **style)
        ax_b.plot([sent[id(r)] / 1e6 for r in ev], acc, **style)
    ax_t.set(title="Test accuracy vs. time", xlabel="parallel-equivalent time (s)", ylabel="test accuracy (%)")
    ax_b.set(title="Test accuracy vs. communication", xlabel="data sent per worker, cumulative (MB, max over workers)")
    if log_bytes:
        ax_b.set_xscale("log")
    for ax in (ax_t, ax_b):
        ax.grid(True, alpha=0.3)
        if ax.get_xlim()[1] > 0 and ax.get_xscale() == "linear":
            ax.set_xlim(left=0)
    ax_b.legend(loc="lower right", fontsize="small")
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
