"""Forward+backward time of a sub-ResNet relative to the whole model, beside its share of the FLOPs.

Paper §2.2: a sub-ResNet of S workers holds about 1/S of the partitioned blocks, so each local step is
cheaper. This measures that on this machine. Configurations are interleaved (round robin over
repetitions) so that machine noise hits them alike; the median is reported.

    python bench/subnet_speed.py [--model paper_resnet101] [--width 0.25] [--batch 32] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from resist.models import create_model
from resist.plan import make_plan

OUT = Path(__file__).resolve().parents[1] / "docs" / "results"


def step(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def flops(model, x, y) -> int:
    with FlopCounterMode(display=False) as counter:
        step(model, x, y)
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="paper_resnet101")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, width=args.width)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    configs = {"full": frozenset()}
    for s in args.workers:
        plan = make_plan(0, 0, s, model.partitionable)
        configs[f"S={s}"] = plan.skipped(0)
    share, times = {}, {name: [] for name in configs}
    for name, skip in configs.items():
        model.skip = skip
        share[name] = flops(model, x, y)
        for _ in range(3):  # warm-up
            step(model, x, y)
    for _ in range(args.reps):
        for name, skip in configs.items():
            model.skip = skip
            t0 = time.perf_counter()
            step(model, x, y)
            times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(v) for n, v in times.items()}
    rows = []
    for name, skip in configs.items():
        rows.append({
            "config": name, "blocks_held": len(model.partitionable) - len(skip),
            "median_s": med[name], "time_ratio": med[name] / med["full"],
            "flops": share[name], "flop_ratio": share[name] / share["full"],
        })
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or "unknown", "threads": torch.get_num_threads(),
           "load_average_1min": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "subnet_speed.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=2))
    lines = [f"# Sub-ResNet step time vs the whole model\n",
             f"`python bench/subnet_speed.py --model {args.model} --width {args.width} --batch {args.batch} "
             f"--reps {args.reps}` on {env['machine']} CPU, {env['threads']} threads (1-minute load average "
             f"{env['load_average_1min']:.1f} at the start), torch {env['torch']}, "
             f"{env['date']}. Forward+backward of one batch, median of {args.reps} interleaved repetitions; "
             "sub-ResNet = worker 0's blocks in round 0 of seed 0.\n",
             "| config | partitioned blocks held | median step | time / full | FLOPs / full |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['blocks_held']} | {r['median_s'] * 1000:.0f} ms | "
                     f"{r['time_ratio']:.3f} | {r['flop_ratio']:.3f} |")
    (OUT / "subnet_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
