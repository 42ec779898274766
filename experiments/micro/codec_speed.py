"""What compression costs: encode and decode throughput of every codec on one core, and that cost
against a training round of the CPU-scale model (the target: under 5% of a round).

For the paper ResNet101 at 1/8 width (0.65 M parameters): the time to encode all its parameters once and
decode them W times (what a worker of a W-way compressed all-reduce does; ResIST moves less) against the
compute of one round of ``local_iters`` SGD steps of the whole model at batch 128, measured here.

    python bench/codec_speed.py [--workers 4] [--local-iters 25] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from benchutil import OUT, describe_library, library_state
from resist.comm.codecs import make_codec, payload_bytes
from resist.models import create_model

CODECS = ("fp16", "bf16", "q8", "q4", "q2", "q1", "topk", "randk")


def median_s(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--local-iters", type=int, default=25)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--name", default="codec_speed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = library_state()
    model = create_model("paper_resnet101", num_classes=10, width=args.width)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # (P,) float32
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step_s = median_s(step, max(5, args.reps // 4))
    round_s = args.local_iters * step_s
    rows = []
    for name in CODECS:
        codec = make_codec(name)
        payload = codec.encode(flat, (0, 0))
        enc = median_s(lambda: codec.encode(flat, (0, 0)), args.reps)
        dec = median_s(lambda: codec.decode(payload, flat.numel(), (0, 0)), args.reps)
        cost = enc + args.workers * dec
        rows.append({"codec": name, "payload_bytes": payload_bytes(payload), "encode_s": enc, "decode_s": dec,
                     "encode_gb_s": flat.numel() * 4 / enc / 1e9, "decode_gb_s": flat.numel() * 4 / dec / 1e9,
                     "round_share": cost / round_s})
        print(rows[-1], flush=True)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "library": describe_library(start, library_state()), "load_avg_1min": os.getloadavg()[0]}
    lines = ["# Codec throughput and cost per round\n",
             f"`python bench/codec_speed.py --width {args.width:g} --workers {args.workers} --local-iters "
             f"{args.local_iters} --reps {args.reps}` ({env['date']}, torch {env['torch']}, library {env['library']}, "
             f"one thread; 1-minute load average {env['load_avg_1min']:.1f} at the end). {flat.numel():,} float32 "
             f"parameters (paper ResNet101 at width {args.width:g}); a round = {args.local_iters} steps of the whole "
             f"model at batch 128, {round_s:.2f} s here. Cost per round = encode once + decode {args.workers} times "
             "(a worker's share of a compressed all-reduce). GB/s of float32 input.\n",
             "| codec | payload (MB) | encode (GB/s) | decode (GB/s) | cost / round |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['payload_bytes'] / 1e6:.3f} | {r['encode_gb_s']:.2f} | {r['decode_gb_s']:.2f} | "
                     f"{r['round_share']:.2%} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "env": env, "step_s": step_s,
                                                       "rows": rows}, indent=2))
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
