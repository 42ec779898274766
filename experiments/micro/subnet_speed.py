"""Training-step time and per-worker throughput of a sub-ResNet relative to the whole model, beside
its share of the FLOPs.

Paper §2.2: a sub-ResNet of S workers holds about 1/S of the partitioned blocks, so each local step is
cheaper. This measures that on this machine. A step is forward, backward and the SGD update of the
parameters the worker holds. Configurations are interleaved (round robin over repetitions) so that
machine noise hits them alike; the median is reported.

    python experiments/micro/subnet_speed.py [--model paper_resnet101] [--width 0.25] [--batch 32] [--reps 10]
    python experiments/micro/subnet_speed.py --device cuda --width 1 --batch 128 --workers 2 4 8 --reps 30 --name subnet_speed_gpu
    python experiments/micro/subnet_speed.py --device cuda --width 1 --batch 128 --workers 2 4 8 --reps 30 \
        --variants fp32 fp32+cl bf16 bf16+cl fp16 fp16+cl --name subnet_speed_amp_gpu

A variant is a precision (fp32; bf16 or fp16 autocast, the trainer's ``--amp``, with fp16's gradient
scaler) and, with ``+cl``, the channels-last memory layout of model and batch (``--channels-last``).
Parameters and the optimizer stay fp32 in every variant, as in training.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, flops, parser, record, table  # noqa: E402
from resist.models import create_model  # noqa: E402
from resist.plan import make_plan  # noqa: E402
from resist.train.optim import Precision  # noqa: E402

AMP = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


def step(model, x, y, opt, precision: Precision) -> None:
    model.zero_grad(set_to_none=True)
    with precision.autocast():
        loss = F.cross_entropy(model(x), y)
    if precision.scaler is None:
        loss.backward()
        opt.step()  # parameters without a gradient (skipped blocks) are left alone
    else:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(opt)
        precision.scaler.update()


def timed(model, x, y, opt, precision=None) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step(model, x, y, opt, precision)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    args = parser(__doc__, model="paper_resnet101", width=0.25, batch=32, workers=[2, 4], reps=10,
                  device=("cpu", "cpu or cuda"), variants=(["fp32"], "precision[+cl] each: fp32, bf16, fp16 "
                                                           "(autocast), +cl for channels-last"),
                  name=("subnet_speed", "docs/results/NAME.{md,json}")).parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("subnet_speed: --device cuda but CUDA is not available")
    for v in args.variants:
        if v.removesuffix("+cl") not in AMP:
            raise SystemExit(f"subnet_speed: unknown variant {v!r}; use fp32, bf16 or fp16, optionally with +cl")
        if v.startswith("fp16") and args.device == "cpu":
            raise SystemExit("subnet_speed: fp16 autocast is for --device cuda; use bf16 on the CPU")

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
    # One model per memory layout, each with its own optimizer; both start from the same weights.
    layouts = {}
    for cl in sorted({v.endswith("+cl") for v in args.variants}):
        m = create_model(args.model, num_classes=10, width=args.width).to(device)
        m.load_state_dict(model.state_dict())
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = m.to(memory_format=fmt)
        layouts[cl] = (m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9), x.contiguous(memory_format=fmt))
    runs = {}
    for v in args.variants:
        m, opt, xv = layouts[v.endswith("+cl")]
        prec = Precision(AMP[v.removesuffix("+cl")], device)
        prec.new_round()
        for name, skip in configs.items():
            runs[(v, name)] = (m, opt, xv, prec, skip)
    times = {key: [] for key in runs}
    for m, opt, xv, prec, skip in runs.values():
        m.skip = skip
        for _ in range(3):  # warm-up (and cuDNN's kernel choice per shape)
            step(m, xv, y, opt, prec)
    for _ in range(args.reps):
        for key, (m, opt, xv, prec, skip) in runs.items():
            m.skip = skip
            times[key].append(timed(m, xv, y, opt, prec))
    med = {key: statistics.median(v) for key, v in times.items()}
    base = med[(args.variants[0], "full")]
    rows = []
    for (v, name), (m, opt, xv, prec, skip) in runs.items():
        full = med[(v, "full")]
        rows.append({
            "variant": v, "config": name, "blocks_held": len(model.partitionable) - len(skip),
            "median_s": med[(v, name)], "time_ratio": med[(v, name)] / full,
            "images_per_s": args.batch / med[(v, name)], "speedup": full / med[(v, name)],
            "vs_first_full": base / med[(v, name)],
            "flops": share[name], "flop_ratio": share[name] / share["full"],
        })
    where = ("CUDA; fp32 is cuDNN's default, TF32 convolutions" if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    lines = [f"# Sub-ResNet training step vs the whole model ({args.name})\n",
             f"On {where}. Forward, backward and SGD update of one batch of {args.batch} 32x32 images, median of "
             f"{args.reps} interleaved repetitions; sub-ResNet = worker 0's blocks in round 0 of seed 0. Speed-up and "
             f"time / full are within a variant; the last column is against the {args.variants[0]} full model.\n",
             *table(["variant", "config", "partitioned blocks held", "median step", "images/s per worker", "speed-up",
                     "time / full", "FLOPs / full", f"vs {args.variants[0]} full"],
                    [[r["variant"], r["config"], r["blocks_held"], f"{r['median_s'] * 1000:.1f} ms", f"{r['images_per_s']:.0f}",
                      f"{r['speedup']:.2f}x", f"{r['time_ratio']:.3f}", f"{r['flop_ratio']:.3f}", f"{r['vs_first_full']:.2f}x"]
                     for r in rows])]
    record(args.name, {"args": vars(args), "rows": rows}, lines, command(), environment(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
