"""ResIST vs local SGD vs data parallel on real CIFAR-10 (paper Tables 2 and 4, scaled down).

Runs the released trainer for every (workers, algorithm, seed), or tabulates run folders that exist
already (``--tabulate``), and writes docs/results/NAME.{md,json}: best test accuracy (mean and spread
over seeds), parallel-equivalent time to the best accuracy and to a common target (local SGD's best
minus 1 point, per worker count), and bytes sent per worker.

    python bench/cifar10_table.py --data-dir ../shared/data/cifar10 --workers 2 4 --seeds 0 1 \\
        --preset cifar10_cpu --runs runs/table --name cifar10_table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

from resist.config import preset
from resist.train import read_metrics, train

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"
ALGOS = ("resist", "local_sgd", "data_parallel")


def time_to(rows: list[dict], target: float) -> float | None:
    """Parallel-equivalent seconds until the first evaluation at or above ``target``."""
    for r in rows:
        if "test_acc" in r and r["test_acc"] >= target:
            return r["time_s"]
    return None


def collect(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    return {"dir": str(run_dir), "algo": summary["algo"], "workers": summary["workers"], "seed": cfg["run"]["seed"],
            "best_acc": summary["best_acc"], "time_to_best_s": summary["time_to_best_s"], "time_s": summary["time_s"],
            "sent_mb": max(summary["sent_bytes_per_worker"]) / 1e6, "rows": read_metrics(run_dir / "metrics.jsonl"),
            "epochs": cfg["optim"]["epochs"], "width": cfg["model"]["width"], "model": cfg["model"]["name"]}


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def table(runs: list[dict]) -> list[str]:
    lines = ["| workers | algorithm | seeds | best test acc (%) | time to best (s) | time to target (s) | "
             "MB sent / worker |", "|---|---|---|---|---|---|---|"]
    for w in sorted({r["workers"] for r in runs}):
        ref = [r["best_acc"] for r in runs if r["workers"] == w and r["algo"] == "local_sgd"]
        target = statistics.fmean(ref) - 1.0 if ref else None
        for algo in ALGOS:
            group = [r for r in runs if r["workers"] == w and r["algo"] == algo]
            if not group:
                continue
            reached = [t for t in (time_to(r["rows"], target) for r in group) if t is not None] if ref else []
            to_target = ("-" if not ref else spread(reached) if len(reached) == len(group)
                         else f"{len(reached)}/{len(group)} reached")
            lines.append(
                f"| {w} | {algo} | {len(group)} | {spread([r['best_acc'] for r in group])} | "
                f"{spread([r['time_to_best_s'] for r in group])} | {to_target} | "
                f"{spread([r['sent_mb'] for r in group])} |")
        if target is not None:
            lines.append(f"| {w} | *target* | | local SGD's best - 1 = {target:.2f} | | | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"))
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    ap.add_argument("--epochs", type=float, default=None, help="override the preset's epochs")
    ap.add_argument("--runs", default="runs/table", help="folder for the run folders")
    ap.add_argument("--tabulate", nargs="*", default=None, metavar="RUN_DIR",
                    help="only tabulate these existing run folders")
    ap.add_argument("--name", default="cifar10_table")
    args = ap.parse_args()

    if args.tabulate is not None:
        runs = [collect(Path(d)) for d in args.tabulate]
        command = "python bench/cifar10_table.py --tabulate " + " ".join(args.tabulate)
    else:
        runs = []
        for w in args.workers:
            for seed in args.seeds:
                for algo in args.algos:
                    out = Path(args.runs) / f"{algo}_w{w}_s{seed}"
                    over = {"algo.name": algo, "algo.workers": w, "run.seed": seed, "run.out": str(out),
                            "data.data_dir": args.data_dir}
                    if args.epochs is not None:
                        over["optim.epochs"] = args.epochs
                    train(preset(args.preset).replace(**over))
                    runs.append(collect(out))
        command = (f"python bench/cifar10_table.py --preset {args.preset} --workers {' '.join(map(str, args.workers))} "
                   f"--seeds {' '.join(map(str, args.seeds))}" + (f" --epochs {args.epochs:g}" if args.epochs else ""))
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count()}
    first = runs[0]
    lines = [f"# CIFAR-10: ResIST vs local SGD vs data parallel ({args.name})\n",
             f"`{command}` — {first['model']} at width {first['width']}, {first['epochs']:g} epoch(s), "
             f"{env['machine']} CPU with {env['cores']} cores, torch {env['torch']}, {env['date']}. Times are "
             "parallel-equivalent seconds (per round, the slowest worker's compute plus the synchronization); "
             "accuracy is on the whole CIFAR-10 test set; mean ± standard deviation over seeds.\n", *table(runs)]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"env": env, "command": command, "runs": [
        {k: v for k, v in r.items() if k != "rows"} for r in runs]}, indent=2))
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
