"""PROJECTION, not a measurement: a paper-scale round (full-width paper ResNet101, CIFAR-10, batch 128 per
worker, ``local_iters`` steps) on GPU workers joined by 1, 10 and 100 Gbit/s links.

The CPU tables train at 1/8 width, where a round moves a few MB and communication costs nothing at any
link speed; the paper's Table 4 speed-ups come from the full-width model on a real network. This puts
two measurements of this project together:

- compute: the per-step time of the full model and of a sub-ResNet, measured on one GPU
  (``bench/subnet_speed.py --device cuda``, docs/results/subnet_speed_gpu.json);
- bytes: what the slowest worker sends per round at full width, counted by the library's communicator
  while the released trainer runs a few real rounds in-process (1 step each, synthetic 32x32 images;
  bytes do not depend on the data). Data parallel's gradient all-reduce happens every step, so its
  per-round bytes are ``local_iters`` times those of a 1-step round (BatchNorm buffers, about 0.1% of
  them, are thereby over-counted).

projected round = local_iters x step time + bytes x 8 / link + messages x latency, with the message
count of ``resist project`` (2 (W-1) per all-reduce; ResIST's point-to-point messages uncounted).

    python bench/paper_scale_projection.py [--workers 2 4 8] [--local-iters 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchutil import OUT, describe_library, library_state
from resist.config import preset
from resist.data import load_dataset
from resist.train import read_metrics, train
from resist.train.projection import allreduce_messages, round_sent

ALGOS = ("local_sgd", "resist", "data_parallel")


def sent_per_round(algo: str, workers: int, rounds: int) -> float:
    """Mean bytes the slowest worker sent per 1-step round of the full-width paper ResNet101."""
    data = load_dataset("synthetic", n_train=64 * workers, n_test=8, num_classes=10, size=32)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset("smoke").replace(**{
            "model.name": "paper_resnet101", "model.layers": None, "model.width": 1.0, "algo.name": algo,
            "algo.workers": workers, "algo.local_iters": 1, "data.batch_size": 2, "run.max_rounds": rounds,
            "run.eval_every": 10**6, "run.out": tmp})
        train(cfg, data)
        sent = round_sent(read_metrics(Path(tmp) / "metrics.jsonl"))
    return sum(sent) / len(sent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--local-iters", type=int, default=50)
    ap.add_argument("--gbits", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--latency-us", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=4, help="1-step rounds counted per configuration")
    ap.add_argument("--gpu-json", default=str(OUT / "subnet_speed_gpu.json"))
    args = ap.parse_args()
    gpu = json.loads(Path(args.gpu_json).read_text())
    step_s = {r["config"]: r["median_s"] for r in gpu["rows"]}
    missing = [s for s in args.workers if f"S={s}" not in step_s]
    if missing:
        raise SystemExit(f"paper_scale_projection: {args.gpu_json} has no sub-ResNet time for S={missing}; "
                         "rerun bench/subnet_speed.py --device cuda with those --workers")
    start = library_state()
    L, lat = args.local_iters, args.latency_us * 1e-6
    rows = []
    for w in args.workers:
        for algo in ALGOS:
            sent = sent_per_round(algo, w, args.rounds) * (L if algo == "data_parallel" else 1)
            compute = L * (step_s[f"S={w}"] if algo == "resist" else step_s["full"])
            msgs = allreduce_messages(w) * (L if algo == "data_parallel" else 1)
            proj = {g: compute + sent * 8 / (g * 1e9) + msgs * lat for g in args.gbits}
            rows.append({"workers": w, "algo": algo, "compute_s": compute, "sent_bytes": sent, "messages": msgs,
                         "round_s": proj})
            print(rows[-1], flush=True)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "library": describe_library(start, library_state()), "gpu": gpu["env"].get("device")}
    lines = ["# PROJECTION (not a measurement): paper-scale rounds on 1, 10 and 100 Gbit/s links\n",
             f"`python bench/paper_scale_projection.py --workers {' '.join(map(str, args.workers))} --local-iters {L}` "
             f"({env['date']}, library {env['library']}). Compute: {L} steps at the per-step times measured on one "
             f"{env['gpu']} ([subnet_speed_gpu.md](subnet_speed_gpu.md), batch 128, full-width paper ResNet101); "
             f"bytes: sent per round by the slowest worker, counted by the library on real rounds of the full-width "
             f"model; {args.latency_us:g} us per message. Time per round in seconds, and speed-up over local SGD "
             "with the same workers.\n",
             "| workers | algorithm | compute / round (s) | MB sent / worker / round | "
             + " | ".join(f"{g:g} Gbit/s" for g in args.gbits) + " |", "|---|---|---|---|" + "---|" * len(args.gbits)]
    for r in rows:
        base = next(x for x in rows if x["workers"] == r["workers"] and x["algo"] == "local_sgd")
        lines.append(f"| {r['workers']} | {r['algo']} | {r['compute_s']:.2f} | {r['sent_bytes'] / 1e6:.1f} | " + " | ".join(
            f"{r['round_s'][g]:.2f} ({base['round_s'][g] / r['round_s'][g]:.2f}x)" for g in args.gbits) + " |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "paper_scale_projection.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": rows}, indent=2))
    (OUT / "paper_scale_projection.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
