"""``resist demo``: ResIST against local SGD on 4 workers, side by side, in a few minutes, offline.

It trains on CIFAR-10 when the files are in the data folder (or can be downloaded), and otherwise on
the small real image dataset that ships inside scikit-learn (8x8 handwritten digits), saying so.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .config import preset
from .data import Dataset, DatasetError, load_dataset
from .io import atomic_write_text
from .rundir import check_fresh, check_out
from .train import train
from .train.metrics import human_bytes

log = logging.getLogger("resist")


def pick_dataset(data_dir: str | None) -> Dataset:
    folder = data_dir or os.environ.get("RESIST_DATA_DIR") or "data"
    try:
        return load_dataset("cifar10", folder)
    except DatasetError:
        pass
    try:
        return load_dataset("cifar10", folder, download=True)
    except DatasetError:
        log.info("CIFAR-10 is not in %s and cannot be downloaded: using the 8x8 digits images that ship "
                 "inside scikit-learn instead.", folder)
    return load_dataset("digits")


def table(rows: list[dict]) -> str:
    head = ("algorithm", "best test acc", "time to best", "train time", "sent / worker / round")
    lines = [f"{head[0]:<10} {head[1]:>13} {head[2]:>13} {head[3]:>11} {head[4]:>22}"]
    for s in rows:
        per_round = max(s["sent_bytes_per_worker"]) / s["rounds"]
        lines.append(f"{s['algo']:<10} {s['best_acc']:>12.2f}% {s['time_to_best_s']:>12.1f}s "
                     f"{s['time_s']:>10.1f}s {human_bytes(per_round):>22}")
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> list[dict]:
    force = getattr(args, "force", False)
    check_out(args.out)
    for algo in ("resist", "local_sgd"):  # both, before either trains
        check_fresh(Path(args.out) / algo, force, resumable=False)
    dataset = pick_dataset(args.data_dir)
    base = preset("demo" if dataset.name.startswith("cifar") else "demo_digits")
    rows = []
    for algo in ("resist", "local_sgd"):
        cfg = base.replace(**{
            "algo.name": algo, "algo.workers": args.workers, "run.max_rounds": args.max_rounds,
            "run.runtime": args.runtime, "run.out": str(Path(args.out) / algo),
            "data.data_dir": str(args.data_dir or os.environ.get("RESIST_DATA_DIR") or "data"),
        })
        rows.append(train(cfg, dataset if args.runtime == "inprocess" else None, force=force))
    text = (f"{base.model.name} at width {base.model.width}, {args.workers} workers, "
            f"{base.optim.epochs:g} epoch(s) of {dataset.name} ({dataset.source}), test accuracy on "
            f"{base.data.eval_limit or len(dataset.test.y):,} test images\n" + table(rows) +
            "\ntimes are parallel-equivalent: per round, the slowest worker's compute plus the synchronization")
    print(text)
    atomic_write_text(text + "\n", Path(args.out) / "table.txt")
    return rows
