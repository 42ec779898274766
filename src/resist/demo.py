"""``resist demo``: ResIST against local SGD on 4 workers, side by side, in a few minutes, offline.

It trains on CIFAR-10 when the files are in the data folder (or can be downloaded), and otherwise on
the small real image dataset that ships inside scikit-learn (8x8 handwritten digits), saying so.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .presets import preset
from .data import Dataset, DatasetError, load_dataset
from .io import atomic_write_text
from .rundir import check_fresh, check_out
from .train import train
from .analysis.projection import round_bytes
from .train.metrics import human_bytes, read_metrics

log = logging.getLogger("resist")


def pick_dataset(data_dir: str | None) -> Dataset:
    named = "--data-dir" if data_dir else "RESIST_DATA_DIR" if os.environ.get("RESIST_DATA_DIR") else None
    folder = data_dir or os.environ.get("RESIST_DATA_DIR") or "data"
    # A folder the user named and mistyped must not turn into a run on the digits that looks fine.
    if named and not Path(folder).is_dir():
        raise DatasetError(f"{named} {folder} does not exist; name the folder that holds CIFAR-10 (or leave "
                           f"{named} out to use ./data, downloading there, or the bundled digits offline)")
    where = f"{Path(folder).resolve()} ({f'from {named}' if named else 'the default, ./data'})"
    try:
        return load_dataset("cifar10", folder)
    except DatasetError as e:
        # files there but damaged: say so, rather than that they are not there
        what = f"CIFAR-10 is not in {where}" if "not found" in str(e) else f"CIFAR-10 in {where} is unusable ({e})"
    try:
        return load_dataset("cifar10", folder, download=True)
    except DatasetError:
        log.info("%s and could not be downloaded: using the 8x8 digits images that ship inside scikit-learn "
                 "instead. To train on CIFAR-10, put it there or name its folder with --data-dir DIR or "
                 "RESIST_DATA_DIR=DIR.", what)
    return load_dataset("digits")


def table(rows: list[dict], metrics: list[list[dict]]) -> str:
    """One line per run; bytes per round as ``resist project`` counts them (from each run's metrics rows)."""
    head = ("algorithm", "best test acc", "time to best", "train time", "bytes / worker / round")
    lines = [f"{head[0]:<10} {head[1]:>13} {head[2]:>13} {head[3]:>11} {head[4]:>23}"]
    for s, m in zip(rows, metrics):
        per_round = sum(round_bytes(m)) / len(m)
        lines.append(f"{s['algo']:<10} {s['best_acc']:>12.2f}% {s['time_to_best_s']:>12.1f}s "
                     f"{s['time_s']:>10.1f}s {human_bytes(per_round):>23}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> list[dict]:
    force = getattr(args, "force", False)
    check_out(args.out)
    for algo in ("resist", "local_sgd"):  # both, before either trains
        check_fresh(Path(args.out) / algo, force, resumable=False)
    dataset = pick_dataset(args.data_dir)
    base = preset("demo" if dataset.name.startswith("cifar") else "demo_digits")
    rows, metrics = [], []
    for algo in ("resist", "local_sgd"):
        cfg = base.replace(**{
            "algo.name": algo, "algo.workers": args.workers, "run.max_rounds": args.max_rounds,
            "run.runtime": args.runtime, "run.out": str(Path(args.out) / algo),
            "data.data_dir": str(args.data_dir or os.environ.get("RESIST_DATA_DIR") or "data"),
        })
        rows.append(train(cfg, dataset if args.runtime == "inprocess" else None, force=force))
        metrics.append(read_metrics(Path(cfg.run.out) / "metrics.jsonl"))
    text = (f"{base.model.name} at width {base.model.width}, {args.workers} workers, "
            f"{rows[0]['epochs_trained']:.3g} epoch(s) of {dataset.name} ({dataset.source}), test accuracy on "
            f"{base.data.eval_limit or len(dataset.test.y):,} test images\n" + table(rows, metrics) +
            "\ntimes are parallel-equivalent: per round, the slowest worker's compute plus the synchronization;"
            "\nbytes per round: the busier direction (sent or received) of the busiest worker, averaged over rounds")
    print(text)
    atomic_write_text(text + "\n", Path(args.out) / "table.txt")
    runs = " ".join(str(Path(args.out) / algo) for algo in ("resist", "local_sgd"))
    log.info("accuracy against time and bytes: resist plot %s; other link speeds: resist project %s", runs, runs)
    return rows
