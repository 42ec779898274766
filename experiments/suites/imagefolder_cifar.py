"""Real data through the image-folder path (paper §5's ImageNet pipeline, scaled down): CIFAR-10 written
as a JPEG class-folder tree, ResIST vs local SGD at 2 workers with the ImageNet stem and random-resized
crops, top-1 and top-5, beside the same runs from the in-memory CIFAR path.

Four runs on the ``--preset`` (default ``cifar10_cpu``: paper ResNet101 at 1/8 width, lr 0.05, 25 local
steps) with ``--workers 2 --stem imagenet --epochs E``:

* folder: ``--dataset imagefolder --data-dir TREE --crop-size 56`` -- the tree's 64-pixel JPEGs,
  random-resized crops of 56 and flips for training, resize to 64 and center-crop 56 for evaluation
  (ImageNet's 256/224 ratio);
* memory: ``--dataset cifar10 --data-dir CIFAR`` -- 32-pixel arrays, 4-pixel-padded crops and flips.

The tree is written first if it is missing (``experiments/data/cifar_to_imagefolder.py``).

    python experiments/run.py imagefolder_cifar --data-dir ../shared/data/cifar10 --tree data/cifar10_jpeg64 \\
        --runs runs/imagefolder_cifar --epochs 1 --loader-workers 1
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common import ROOT, Spec, options, public, record, table

sys.path.insert(0, str(ROOT / "experiments" / "data"))
from cifar_to_imagefolder import load_cifar, write_tree  # noqa: E402

ALGOS = ("resist", "local_sgd")
PATHS = ("folder", "memory")
RUNS = "runs/imagefolder_cifar"


def add_arguments(ap) -> None:
    options(ap, tree=(Path("data/cifar10_jpeg64"), "the JPEG tree (written if missing)"),
            size=(64, "pixels of the tree's images, when it is written"), crop=(56, "--crop-size of the folder runs"),
            preset="cifar10_cpu", epochs=1.0, seed=0, loader_workers=(1, "per worker, for the folder runs"),
            threads=(1, "intra-op threads of each run (OMP_NUM_THREADS)"),
            max_rounds=(int, "cut every run short (a smoke check, not a result)"), name="imagefolder_cifar10")


def specs(args) -> list[Spec]:
    out = []
    for path in PATHS:
        for algo in ALGOS:
            flags = ["--algo", algo, "--workers", "2", "--stem", "imagenet", "--epochs", f"{args.epochs:g}",
                     "--seed", str(args.seed), *(["--max-rounds", str(args.max_rounds)] if args.max_rounds else [])]
            flags += (["--dataset", "imagefolder", "--data-dir", str(args.tree), "--crop-size", str(args.crop),
                       "--loader-workers", str(args.loader_workers)] if path == "folder"
                      else ["--dataset", "cifar10", "--data-dir", str(args.data_dir)])
            out.append(Spec(f"{path}_{algo}_s{args.seed}", args.preset, flags, path))
    return out


def prepare(args) -> None:
    # Intra-op threads per run: on a shared machine 2 threads of each run's process fight other
    # processes for the cores (a step was 6x slower than with one thread under load).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if not args.tree.is_dir():
        t0 = time.perf_counter()
        counts = write_tree(load_cifar(Path(args.data_dir)), args.tree, args.size, quality=95)
        print(f"[imagefolder_cifar] wrote {counts} to {args.tree} in {time.perf_counter() - t0:.0f} s", flush=True)


def tabulate(args, results: list[dict], env: dict) -> None:
    for r in results:
        r |= {"path": r["label"], "top5_at_best": r["summary"].get("top5_at_best"), "best_top5": r["summary"].get("best_top5"),
              "epochs": r["summary"]["epochs_trained"], "curve": [(x["epoch"], x["test_acc"], x.get("test_top5"))
                                                                 for x in r["run"].evaluated]}
    rows = [[r["path"], r["algo"], f"{r['best_acc']:.2f}", f"{r['top5_at_best']:.2f}", f"{r['final_acc']:.2f}",
             f"{r['time_to_best_s']:.0f}", f"{r['time_s']:.0f}", f"{r['wall_s']:.0f}", f"{r['sent_mb']:.1f}"]
            for r in results]
    gaps = []
    for path in PATHS:
        got = {r["algo"]: r for r in results if r["path"] == path}
        if set(got) == set(ALGOS):
            res, ls = got["resist"], got["local_sgd"]
            gaps.append([path, f"{res['best_acc'] - ls['best_acc']:+.2f}", f"{res['top5_at_best'] - ls['top5_at_best']:+.2f}",
                         f"{res['time_to_best_s'] / max(ls['time_to_best_s'], 1e-9):.2f}x"])
    lines = ["# CIFAR-10 through the image-folder path vs in memory: ResIST and local SGD, 2 workers, ImageNet stem\n",
             f"{args.threads} intra-op thread(s) per run. Preset `{args.preset}` with `--workers 2 --stem imagenet "
             f"--epochs {args.epochs:g}`, seed {args.seed}, one run each. Folder: CIFAR-10 as {args.size}-pixel JPEGs "
             f"(q95), random-resized crops of {args.crop} and flips, evaluation resize + center crop {args.crop}, "
             f"{args.loader_workers} loader process(es) per worker. Memory: the 32-pixel arrays with 4-pixel-padded "
             "crops and flips. Times are parallel-equivalent (per round the slowest worker's compute plus the "
             "synchronization); top-1 and top-5 on the 10,000 test images.\n",
             *table(["data path", "algorithm", "best top-1 (%)", "top-5 at best (%)", "final top-1 (%)",
                     "time to best (s)", "train time (s)", "wall (s)", "MB sent / worker"], rows), "",
             *table(["data path", "ResIST - local SGD, best top-1 (points)", "top-5 at best (points)",
                     "ResIST's time to best / local SGD's"], gaps), ""]
    if args.max_rounds:
        lines.append(f"**Cut to {args.max_rounds} rounds per run (`--max-rounds`): a smoke check, not a result.**")
    record(args.name, {"args": {k: str(v) for k, v in vars(args).items()}, "runs": [public(r) for r in results]},
           lines, args.command, env)
