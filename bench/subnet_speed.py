"""Training-step time and per-worker throughput of a sub-ResNet relative to the whole model, beside
its share of the FLOPs.

Paper §2.2: a sub-ResNet of S workers holds about 1/S of the partitioned blocks, so each local step is
cheaper. This measures that on this machine. A step is forward, backward and the SGD update of the
parameters the worker holds. Configurations are interleaved (round robin over repetitions) so that
machine noise hits them alike; the median is reported.

    python bench/subnet_speed.py [--model paper_resnet101] [--width 0.25] [--batch 32] [--reps 10]
    python bench/subnet_speed.py --device cuda --width 1 --batch 128 --workers 2 4 8 --reps 30 --name subnet_speed_gpu
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


def step(model, x, y, opt=None):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    if opt is not None:
        opt.step()  # parameters without a gradient (skipped blocks) are left alone


def timed(model, x, y, opt) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(model, x, y, opt)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


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
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--name", default="subnet_speed", help="docs/results/NAME.{md,json}")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("subnet_speed: --device cuda but CUDA is not available")

    torch.manual_seed(0)
    device = torch.device(args.device)
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
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for name, skip in configs.items():
        model.skip = skip
        for _ in range(3):  # warm-up (and cuDNN's kernel choice per shape)
            step(model, x, y, opt)
    for _ in range(args.reps):
        for name, skip in configs.items():
            model.skip = skip
            times[name].append(timed(model, x, y, opt))
    med = {n: statistics.median(v) for n, v in times.items()}
    rows = []
    for name, skip in configs.items():
        rows.append({
            "config": name, "blocks_held": len(model.partitionable) - len(skip),
            "median_s": med[name], "time_ratio": med[name] / med["full"],
            "images_per_s": args.batch / med[name], "speedup": med["full"] / med[name],
            "flops": share[name], "flop_ratio": share[name] / share["full"],
        })
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or "unknown", "threads": torch.get_num_threads(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "load_average_1min": os.getloadavg()[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=2))
    where = (f"{env['device']} (CUDA, torch {env['torch']}, fp32 with cuDNN's default TF32 convolutions)"
             if device.type == "cuda" else f"{env['machine']} CPU, {env['threads']} threads, torch {env['torch']}")
    lines = [f"# Sub-ResNet training step vs the whole model ({args.name})\n",
             f"`python bench/subnet_speed.py --model {args.model} --width {args.width} --batch {args.batch} "
             f"--workers {' '.join(map(str, args.workers))} --reps {args.reps} --device {args.device} --name {args.name}` "
             f"on {where} (1-minute load average {env['load_average_1min']:.1f} at the start), {env['date']}. "
             f"Forward, backward and SGD update of one batch of {args.batch} 32x32 images, median of {args.reps} "
             "interleaved repetitions; sub-ResNet = worker 0's blocks in round 0 of seed 0.\n",
             "| config | partitioned blocks held | median step | images/s per worker | speed-up | time / full | FLOPs / full |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['blocks_held']} | {r['median_s'] * 1000:.1f} ms | {r['images_per_s']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['time_ratio']:.3f} | {r['flop_ratio']:.3f} |")
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
