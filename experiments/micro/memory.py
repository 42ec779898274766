"""Per-worker memory of ResIST vs local SGD on real processes (paper §2.5, Fig. 3: a worker holds only
its sub-ResNet).

Two figures per worker, from each run's summary.json: the model state it held at its largest
(parameters, gradients, BatchNorm buffers, optimizer state: exact bytes of the tensors) and the
process's peak resident memory (max RSS; on a GPU, CUDA max allocated), which adds activations, the
data and the framework. Synthetic 32x32 data, a few rounds, so only memory is meaningful here.

    python bench/memory.py [--width 1.0] [--workers 2 4] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from resist.config import preset
from resist.data import load_dataset
from resist.train import train

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="paper_resnet101")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    data = load_dataset("synthetic", n_train=args.batch * max(args.workers) * 4, n_test=64, num_classes=10, size=32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            for algo in ("resist", "local_sgd"):
                cfg = preset("cifar10_resnet101_paper").replace(**{
                    "model.name": args.model, "model.width": args.width, "algo.name": algo,
                    "algo.workers": workers, "algo.local_iters": 2, "data.batch_size": args.batch,
                    "run.max_rounds": 2, "run.eval_every": 100, "run.runtime": "dist",
                    "run.out": f"{tmp}/{algo}{workers}"})
                s = train(cfg, data)
                rows.append({"algo": algo, "workers": workers,
                             "state_mb": [b / 1e6 for b in s["model_state_bytes_per_worker"]],
                             "peak_mb": [b / 1e6 for b in s["peak_memory_bytes_per_worker"]],
                             "peak_kind": s["peak_memory_kind"]})
                print(rows[-1], flush=True)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=2))
    lines = ["# Memory per worker: ResIST vs local SGD\n",
             f"`python bench/memory.py --model {args.model} --width {args.width} --batch {args.batch} --workers "
             f"{' '.join(map(str, args.workers))}` — gloo processes on {env['machine']} CPU, torch {env['torch']}, "
             f"{env['date']}. Model state = parameters + gradients + BatchNorm buffers + momentum a worker held "
             "at its largest (exact tensor bytes); peak = the process's max resident set (activations, data and "
             "the framework included). Max over workers.\n",
             "| workers | algorithm | model state / worker | ResIST / local SGD | peak RSS / worker |",
             "|---|---|---|---|---|"]
    for r in rows:
        ref = next(x for x in rows if x["workers"] == r["workers"] and x["algo"] == "local_sgd")
        ratio = max(r["state_mb"]) / max(ref["state_mb"])
        lines.append(f"| {r['workers']} | {r['algo']} | {max(r['state_mb']):.0f} MB | {ratio:.2f} | "
                     f"{max(r['peak_mb']):.0f} MB |")
    (OUT / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
