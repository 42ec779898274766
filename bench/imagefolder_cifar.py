"""Real data through the image-folder path (paper §5's ImageNet pipeline, scaled down): CIFAR-10 written
as a JPEG class-folder tree, ResIST vs local SGD at 2 workers with the ImageNet stem and random-resized
crops, top-1 and top-5, beside the same runs from the in-memory CIFAR path.

Four runs, each one ``resist train`` process (``python -m resist.cli``, the library next to this
script) on the ``--preset`` (default ``cifar10_cpu``: paper ResNet101 at 1/8 width, lr 0.05, 25 local
steps) with ``--workers 2 --stem imagenet --epochs E``:

* folder: ``--dataset imagefolder --data-dir TREE --crop-size 56`` -- the tree's 64-pixel JPEGs,
  random-resized crops of 56 and flips for training, resize to 64 and center-crop 56 for evaluation
  (ImageNet's 256/224 ratio);
* memory: ``--dataset cifar10 --data-dir CIFAR`` -- 32-pixel arrays, 4-pixel-padded crops and flips.

The tree is written first if it is missing (``bench/cifar_to_imagefolder.py``). A finished run folder
with the same command is reused and an interrupted one resumed, so the suite can be stopped and
started again. Writes docs/results/NAME.{md,json}.

    python bench/imagefolder_cifar.py --cifar ../shared/data/cifar10 --tree data/cifar10_jpeg64 \\
        --runs runs/imagefolder_cifar --epochs 1 --loader-workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchutil import OUT, ROOT, describe_library, library_state
from cifar_to_imagefolder import load_cifar, write_tree

ALGOS = ("resist", "local_sgd")
PATHS = ("folder", "memory")


def flags(path: str, algo: str, args: argparse.Namespace) -> list[str]:
    common = ["--algo", algo, "--workers", "2", "--stem", "imagenet", "--epochs", f"{args.epochs:g}",
              "--seed", str(args.seed)]
    if args.max_rounds:
        common += ["--max-rounds", str(args.max_rounds)]
    if path == "folder":
        return [*common, "--dataset", "imagefolder", "--data-dir", str(args.tree), "--crop-size", str(args.crop),
                "--loader-workers", str(args.loader_workers)]
    return [*common, "--dataset", "cifar10", "--data-dir", str(args.cifar)]


def run(out: Path, argv_tail: list[str], preset: str, threads: int) -> Path:
    """Train unless ``out`` holds this finished run; continue it from its checkpoint if it was cut short."""
    argv = [sys.executable, "-m", "resist.cli", "train", preset, *argv_tail, "--out", str(out)]
    record = " ".join(["resist", *argv[3:]])
    done, started, wall = out / "summary.json", out / "command.pending", out / "wall_s.txt"
    if done.is_file() and (out / "command.txt").is_file() and (out / "command.txt").read_text() == record:
        print(f"[imagefolder_cifar] reusing {out}", flush=True)
        return out
    before = 0.0
    if started.is_file() and started.read_text() == record and list((out / "checkpoints").glob("round_*.pt")):
        argv = [*argv[:4], "--resume", str(out)]
        before = float(wall.read_text()) if wall.is_file() else 0.0
        print(f"[imagefolder_cifar] resuming {out}", flush=True)
    else:
        print(f"[imagefolder_cifar] {record}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        started.write_text(record)
        argv.append("--force")  # this command replaces whatever run the folder held (not in the record)
    # Intra-op threads per run: on a shared machine 2 threads of each run's process fight other
    # processes for the cores (a step was 6x slower than with one thread under load).
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate()
    finally:
        wall.write_text(f"{before + time.perf_counter() - t0:.1f}\n")
    if proc.returncode != 0:
        raise SystemExit(f"imagefolder_cifar: {record} failed: {err.strip().splitlines()[-1:]}")
    (out / "command.txt").write_text(record)
    return out


def collect(path: str, algo: str, run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"path": path, "algo": algo, "dir": str(run_dir), "command": (run_dir / "command.txt").read_text(),
            "best_top1": s["best_acc"], "final_top1": s["final_acc"], "top5_at_best": s.get("top5_at_best"),
            "best_top5": s.get("best_top5"), "time_to_best_s": s["time_to_best_s"], "time_s": s["time_s"],
            "wall_s": float((run_dir / "wall_s.txt").read_text()), "epochs": s["epochs_trained"],
            "sent_mb": max(s["sent_bytes_per_worker"]) / 1e6,
            "curve": [(r["epoch"], r["test_acc"], r.get("test_top5")) for r in rows if r.get("test_acc") is not None]}


def table(results: list[dict]) -> list[str]:
    lines = ["| data path | algorithm | best top-1 (%) | top-5 at best (%) | final top-1 (%) | time to best (s) | "
             "train time (s) | wall (s) | MB sent / worker |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['path']} | {r['algo']} | {r['best_top1']:.2f} | {r['top5_at_best']:.2f} | "
                     f"{r['final_top1']:.2f} | {r['time_to_best_s']:.0f} | {r['time_s']:.0f} | {r['wall_s']:.0f} | "
                     f"{r['sent_mb']:.1f} |")
    lines += ["", "| data path | ResIST - local SGD, best top-1 (points) | top-5 at best (points) | "
              "ResIST's time to best / local SGD's |", "|---|---|---|---|"]
    for path in PATHS:
        got = {r["algo"]: r for r in results if r["path"] == path}
        if set(got) == set(ALGOS):
            res, ls = got["resist"], got["local_sgd"]
            lines.append(f"| {path} | {res['best_top1'] - ls['best_top1']:+.2f} | "
                         f"{res['top5_at_best'] - ls['top5_at_best']:+.2f} | "
                         f"{res['time_to_best_s'] / max(ls['time_to_best_s'], 1e-9):.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cifar", type=Path, default=Path(os.environ.get("RESIST_DATA_DIR", "data")),
                    help="CIFAR-10's numpy layout")
    ap.add_argument("--tree", type=Path, default=Path("data/cifar10_jpeg64"), help="the JPEG tree (written if missing)")
    ap.add_argument("--size", type=int, default=64, help="pixels of the tree's images, when it is written")
    ap.add_argument("--crop", type=int, default=56, help="--crop-size of the folder runs")
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loader-workers", type=int, default=1, help="per worker, for the folder runs")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of each run (OMP_NUM_THREADS)")
    ap.add_argument("--max-rounds", type=int, default=None, help="cut every run short (a smoke check, not a result)")
    ap.add_argument("--runs", type=Path, default=Path("runs/imagefolder_cifar"))
    ap.add_argument("--results", type=Path, default=OUT, help="where NAME.md and NAME.json go")
    ap.add_argument("--name", default="imagefolder_cifar10")
    args = ap.parse_args()
    start = library_state()
    if not args.tree.is_dir():
        t0 = time.perf_counter()
        counts = write_tree(load_cifar(args.cifar), args.tree, args.size, quality=95)
        print(f"[imagefolder_cifar] wrote {counts} to {args.tree} in {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    for path in PATHS:
        for algo in ALGOS:
            out = run(args.runs / f"{path}_{algo}_s{args.seed}", flags(path, algo, args), args.preset, args.threads)
            results.append(collect(path, algo, out))
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "library": describe_library(start, library_state()), "load_avg_1min": os.getloadavg()[0]}
    command = " ".join(["python bench/imagefolder_cifar.py", *sys.argv[1:]])
    lines = [f"# CIFAR-10 through the image-folder path vs in memory: ResIST and local SGD, 2 workers, ImageNet stem\n",
             f"`{command}` ({env['date']}; {env['machine']}, {env['cpus']} CPUs, 1-minute load average "
             f"{env['load_avg_1min']:.1f} at the end; torch {env['torch']}; library {env['library']}; "
             f"{args.threads} intra-op thread(s) per run). Preset "
             f"`{args.preset}` with `--workers 2 --stem imagenet --epochs {args.epochs:g}`, seed {args.seed}, one "
             f"run each. Folder: CIFAR-10 as {args.size}-pixel JPEGs (q95), random-resized crops of {args.crop} "
             f"and flips, evaluation resize + center crop {args.crop}, {args.loader_workers} loader process(es) per "
             "worker. Memory: the 32-pixel arrays with 4-pixel-padded crops and flips. Times are "
             "parallel-equivalent (per round the slowest worker's compute plus the synchronization); top-1 "
             "and top-5 on the 10,000 test images.\n", *table(results), ""]
    if args.max_rounds:
        lines.append(f"**Cut to {args.max_rounds} rounds per run (`--max-rounds`): a smoke check, not a result.**")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "env": env, "args": {k: str(v) for k, v in vars(args).items()}, "runs": results},
        indent=2) + "\n")
    (args.results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
