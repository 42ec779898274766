"""PROJECTION, not a measurement: a paper-scale round (full-width paper ResNet101, CIFAR-10, batch 128 per
worker, ``local_iters`` steps) on GPU workers joined by 1, 10 and 100 Gbit/s links.

The CPU tables train at 1/8 width, where a round moves a few MB and communication costs nothing at any
link speed; the paper's Table 4 speed-ups come from the full-width model on a real network. This puts
two measurements of this project together:

- compute: the per-step time of the full model and of a sub-ResNet, measured on one GPU
  (``experiments/micro/subnet_speed.py --device cuda``, docs/results/subnet_speed_gpu.json);
- bytes: what the slowest worker sends per round at full width, counted by the library's communicator
  while the released trainer runs a few real rounds in-process (1 step each, synthetic 32x32 images;
  bytes do not depend on the data). Data parallel's gradient all-reduce happens every step, so its
  per-round bytes are ``local_iters`` times those of a 1-step round (BatchNorm buffers, about 0.1% of
  them, are thereby over-counted).

projected round = local_iters x step time + bytes x 8 / link + messages x latency, as ``resist project``
computes it: bytes are, per worker, the larger of sent and received (the slowest worker's), and messages
are those the communicator counted (2 (W-1) per all-reduce; per point-to-point exchange the larger of
its sends and receives).

With a minimum depth m (default 4, the paper's Table 1 convention; it changes nothing at 2 and 4
workers, and at 8 gives each sub-ResNet 4 blocks instead of 3), a sub-ResNet may hold a number of blocks
that the GPU bench did not time; its step time is then interpolated linearly in the blocks held between
the two nearest measured configurations, and the table says so.

    python experiments/micro/paper_scale_projection.py [--workers 2 4 8] [--local-iters 50] [--min-depth 4]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, command, environment, library_state, parser, record, table  # noqa: E402
from resist.analysis.projection import round_bytes, round_messages  # noqa: E402
from resist.presets import preset  # noqa: E402
from resist.data import load_dataset  # noqa: E402
from resist.plan import candidate_blocks, make_plan  # noqa: E402
from resist.train import read_metrics, train  # noqa: E402
from resist.train.trainer import model_builder  # noqa: E402

ALGOS = ("local_sgd", "resist", "data_parallel")


def per_round(algo: str, workers: int, rounds: int, min_depth: int) -> tuple[float, float, int]:
    """Mean bytes (max over workers of max(sent, received)) and messages per 1-step round of the
    full-width paper ResNet101, and the partitioned blocks worker 0 holds in round 0."""
    data = load_dataset("synthetic", n_train=64 * workers, n_test=8, num_classes=10, size=32)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset("smoke").replace(**{
            "model.name": "paper_resnet101", "model.layers": None, "model.width": 1.0, "algo.name": algo,
            "algo.workers": workers, "algo.local_iters": 1, "algo.min_depth": min_depth if algo == "resist" else 0,
            "data.batch_size": 2, "run.max_rounds": rounds + 1, "run.eval_every": 10**6, "run.out": tmp})
        train(cfg, data)
        rows = read_metrics(Path(tmp) / "metrics.jsonl")[:-1]  # the last round sends nothing onward
        nbytes, msgs = round_bytes(rows), round_messages(rows, algo)
    model = model_builder(cfg, 10)()
    cands = candidate_blocks(model.partitionable, model.skippable, "section3")
    held = len(make_plan(0, 0, workers, cands, cfg.algo.min_depth).assignments[0]) if algo == "resist" else len(cands)
    return sum(nbytes) / len(nbytes), sum(msgs) / len(msgs), held


def step_time(measured: dict[int, float], blocks: int) -> tuple[float, bool]:
    """GPU seconds per step of a sub-ResNet holding ``blocks`` partitioned blocks: measured, or linearly
    interpolated between the nearest measured block counts (second value True)."""
    if blocks in measured:
        return measured[blocks], False
    lo = max(b for b in measured if b < blocks)
    hi = min(b for b in measured if b > blocks)
    return measured[lo] + (measured[hi] - measured[lo]) * (blocks - lo) / (hi - lo), True


def main() -> None:
    args = parser(__doc__, workers=[2, 4, 8], local_iters=50, gbits=[1.0, 10.0, 100.0], latency_us=50.0,
                  min_depth=(4, "ResIST's minimum depth (default 4, as Table 1)"),
                  rounds=(4, "1-step rounds counted per configuration"), gpu_json=str(OUT / "subnet_speed_gpu.json"),
                  name="paper_scale_projection").parse_args()
    gpu = json.loads(Path(args.gpu_json).read_text())
    by_blocks = {r["blocks_held"]: r["median_s"] for r in gpu["rows"]}  # partitioned blocks held -> step seconds
    start = library_state()
    L, lat = args.local_iters, args.latency_us * 1e-6
    rows = []
    for w in args.workers:
        for algo in ALGOS:
            nbytes, msgs, held = per_round(algo, w, args.rounds, args.min_depth)
            per_step = L if algo == "data_parallel" else 1  # its gradients are all-reduced every step
            step, interpolated = step_time(by_blocks, held)
            compute = L * step
            proj = {g: compute + per_step * nbytes * 8 / (g * 1e9) + per_step * msgs * lat for g in args.gbits}
            rows.append({"workers": w, "algo": algo, "blocks_held": held, "step_interpolated": interpolated,
                         "compute_s": compute, "bytes": per_step * nbytes, "messages": per_step * msgs,
                         "round_s": proj})
            print(rows[-1], flush=True)
    base = {r["workers"]: r for r in rows if r["algo"] == "local_sgd"}
    lines = ["# PROJECTION (not a measurement): paper-scale rounds on 1, 10 and 100 Gbit/s links\n",
             f"Compute: {L} steps at the per-step times measured on one {gpu['env'].get('device')} "
             "([subnet_speed_gpu.md](subnet_speed_gpu.md), batch 128, full-width paper ResNet101); bytes: per round, "
             "the slowest worker's larger direction (sent or received), counted by the library on real rounds of the "
             f"full-width model; messages as the communicator counted them, {args.latency_us:g} us each; ResIST with "
             f"minimum depth {args.min_depth}. Time per round in seconds, and speed-up over local SGD with the same "
             "workers. A step time marked * is interpolated between measured sub-ResNet sizes.\n",
             *table(["workers", "algorithm", "blocks held", "compute / round (s)", "MB / worker / round",
                     "messages / round", *(f"{g:g} Gbit/s" for g in args.gbits)],
                    [[r["workers"], r["algo"], r["blocks_held"], f"{r['compute_s']:.2f}{'*' if r['step_interpolated'] else ''}",
                      f"{r['bytes'] / 1e6:.1f}", f"{r['messages']:.0f}", *(
                          f"{r['round_s'][g]:.2f} ({base[r['workers']]['round_s'][g] / r['round_s'][g]:.2f}x)"
                          for g in args.gbits)] for r in rows])]
    record(args.name, {"args": vars(args), "rows": rows}, lines, command(),
           environment(start, gpu_measured=gpu["env"].get("device")))


if __name__ == "__main__":
    main()
