"""Where a local step's time goes, whole model against the S-worker sub-ResNets (issue 15, part 3).

A ResIST round is ``local_iters`` local steps plus one synchronization; the steps are nearly all of it
(``round_breakdown.md``). This splits one step as the trainer runs it (``resist.train.optim.train_step``
with the optimizer ``make_optimizer`` builds) into: preparing the batch (index, crop, flip, normalize on
real CIFAR-10), forward with the loss, backward, zeroing gradients and the optimizer step, for the whole
model and for each of the S sub-ResNets of round 0 (the slowest worker sets the round's time). Forward and
backward are further split into the time spent inside ATen operators (``torch.profiler``, self CPU
time summed over operators) and the rest, which is Python and dispatch overhead. Configurations are
interleaved, so machine noise hits them alike; medians over repetitions.

The FLOP share is forward + backward FLOPs (``FlopCounterMode``) relative to the whole model's: what
the step time would be if time followed FLOPs.

    OMP_NUM_THREADS=1 python experiments/micro/step_breakdown.py --data-dir ../shared/data/cifar10 --widths 0.125 0.25 --workers 4
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, flops, library_state, parser, record, table  # noqa: E402
from resist.config import Config  # noqa: E402
from resist.data import BatchStream, load_dataset  # noqa: E402
from resist.models import create_model  # noqa: E402
from resist.plan import make_plan  # noqa: E402
from resist.train.optim import make_optimizer  # noqa: E402

PHASES = ("data", "forward", "backward", "zero_grad", "optimizer")


def timed_step(model, opt, stream, step: int) -> dict[str, float]:
    t = {}
    t0 = time.perf_counter()
    x, y = stream.batch(step)
    t1 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    t2 = time.perf_counter()
    opt.zero_grad(set_to_none=False)
    t3 = time.perf_counter()
    loss.backward()
    t4 = time.perf_counter()
    opt.step()
    t5 = time.perf_counter()
    t.update(data=t1 - t0, forward=t2 - t1, zero_grad=t3 - t2, backward=t4 - t3, optimizer=t5 - t4)
    return t


def op_share(model, opt, stream) -> float:
    """Fraction of forward + backward wall time spent inside ATen operators (self CPU time)."""
    x, y = stream.batch(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        wall = time.perf_counter() - t0
    ops = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / 1e6
    return min(ops / wall, 1.0)


def main() -> None:
    args = parser(__doc__, data_dir=os.environ.get("RESIST_DATA_DIR", "data"), model="paper_resnet101",
                  widths=[0.125, 0.25], workers=4, batch=128, min_depth=4, reps=10,
                  channels_last=(False, "model and batches in channels-last layout"), name="step_breakdown").parse_args()
    start = library_state()
    cfg = Config()
    cfg.data.data_dir = args.data_dir
    try:
        dataset = load_dataset("cifar10", args.data_dir)
    except ValueError as e:
        raise SystemExit(f"step_breakdown: {e}")
    stream = BatchStream(dataset.train, dataset.mean, dataset.std, 1, 0, args.batch, seed=0)
    if args.channels_last:  # as the trainer moves a batch with --channels-last
        batch = stream.batch
        stream.batch = lambda step: (lambda x, y: (x.contiguous(memory_format=torch.channels_last), y))(*batch(step))
    tables = []
    for width in args.widths:
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, width=width)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        plan = make_plan(0, 0, args.workers, model.partitionable, min_depth=args.min_depth)
        configs = {"full": frozenset(), **{f"S={args.workers} worker {w}": plan.skipped(w) for w in range(args.workers)}}
        # Each section's non-strided blocks skipped at once: the step time they take away, per block,
        # is that section's cost of one block (FLOPs are equal per block across sections).
        probes = {k: frozenset(i for i in sec if i in model.skippable) for k, sec in enumerate(model.sections, 1)}
        configs.update({f"probe: section {k} skipped": skip for k, skip in probes.items()})
        x, y = stream.batch(0)
        share, opts = {}, {}
        for name, skip in configs.items():
            model.skip = skip
            share[name] = flops(model, x, y)
            held = [(n, p) for n, p in model.named_parameters() if not _skipped(n, skip)]
            # what make_optimizer reads of a part store: the parameters held; momentum restarts
            opts[name] = make_optimizer(SimpleNamespace(trainable=lambda held=held: held, carry=False), cfg.optim)
        for name, skip in configs.items():  # warm-up
            model.skip = skip
            timed_step(model, opts[name], stream, 0)
        times = {name: {p: [] for p in PHASES} for name in configs}
        for rep in range(args.reps):
            for name, skip in configs.items():
                model.skip = skip
                for p, v in timed_step(model, opts[name], stream, rep).items():
                    times[name][p].append(v)
        ops = {}
        for name, skip in configs.items():
            model.skip = skip
            ops[name] = op_share(model, opts[name], stream)
        rows = []
        for name, skip in configs.items():
            med = {p: statistics.median(v) for p, v in times[name].items()}
            med["total"] = sum(med.values())
            rows.append({"config": name, "blocks_held": len(model.partitionable) - len(skip), "median_s": med,
                         "flops": share[name], "aten_share_fwd_bwd": ops[name],
                         "params_held": sum(p.numel() for n, p in model.named_parameters() if not _skipped(n, skip))})
        full = rows[0]
        for r in rows:
            r["time_ratio"] = r["median_s"]["total"] / full["median_s"]["total"]
            r["flop_ratio"] = r["flops"] / full["flops"]
            r["ratio_over_flop_share"] = r["time_ratio"] / r["flop_ratio"]
        by_name = {r["config"]: r for r in rows}
        sections = []
        for k, skip in probes.items():
            r = by_name[f"probe: section {k} skipped"]
            n = len(skip)
            per_block_s = (full["median_s"]["total"] - r["median_s"]["total"]) / n
            per_block_flops = (full["flops"] - r["flops"]) / n
            sections.append({"section": k, "skippable_blocks": n, "per_block_ms": per_block_s * 1000,
                             "per_block_gflops": per_block_flops / 1e9,
                             "ms_per_gflop": per_block_s * 1000 / (per_block_flops / 1e9)})
        removable = sum(s_["skippable_blocks"] * s_["per_block_ms"] for s_ in sections)
        tables.append({"width": width, "rows": [r for r in rows if not r["config"].startswith("probe")],
                       "sections": sections, "fixed_ms": full["median_s"]["total"] * 1000 - removable})
    lines = [f"# One local step, whole model vs sub-ResNets ({args.name})\n",
             f"{torch.get_num_threads()} thread(s). Batch {args.batch} of real CIFAR-10, SGD with momentum and weight "
             f"decay over the parameters held, as the trainer steps; medians of {args.reps} interleaved repetitions. "
             "*ATen share*: fraction of forward + backward inside ATen operators (the rest is Python and dispatch).\n"]
    for t in tables:
        lines += [f"## Width {t['width']}\n", *table(
            ["config", "blocks held", "params held", *PHASES, "step", "time / full", "FLOPs / full", "time / FLOP share",
             "ATen share"], [[r["config"], r["blocks_held"], f"{r['params_held']:,}",
                              *(f"{r['median_s'][p] * 1000:.1f}" for p in (*PHASES, "total")), f"{r['time_ratio']:.3f}",
                              f"{r['flop_ratio']:.3f}", f"{r['ratio_over_flop_share']:.2f}x", f"{r['aten_share_fwd_bwd']:.2f}"]
                             for r in t["rows"]]),
                  "\n(times in ms)\n",
                  "Cost of one non-strided block per section (whole model's step minus the step with that "
                  "section's non-strided blocks skipped, divided by their number):\n",
                  *table(["section", "blocks", "ms / block", "GFLOPs / block", "ms / GFLOP"],
                         [[c["section"], c["skippable_blocks"], f"{c['per_block_ms']:.1f}", f"{c['per_block_gflops']:.3f}",
                           f"{c['ms_per_gflop']:.1f}"] for c in t["sections"]]),
                  f"\nLeft when every non-strided block is taken away (stem, strided blocks, head, data, "
                  f"optimizer): {t['fixed_ms']:.1f} ms.\n"]
    record(args.name, {"tables": tables}, lines, command(), environment(start, threads=torch.get_num_threads()))


def _skipped(name: str, skip: frozenset[int]) -> bool:
    parts = name.split(".")
    return parts[0] == "blocks" and int(parts[1]) in skip


if __name__ == "__main__":
    main()
