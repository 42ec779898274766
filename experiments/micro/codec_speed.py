"""What compression costs: encode and decode throughput of every codec on one core, and that cost
against a training round of the CPU-scale model (the target: under 5% of a round).

For the paper ResNet101 at 1/8 width (0.65 M parameters): the time to encode all its parameters once and
decode them W times (what a worker of a W-way compressed all-reduce does; ResIST moves less) against the
compute of one round of ``local_iters`` SGD steps of the whole model at batch 128, measured here.

    python experiments/micro/codec_speed.py [--workers 4] [--local-iters 25] [--reps 20]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, library_state, median_s, parser, record, sgd_step, table  # noqa: E402
from resist.comm.codecs import make_codec, payload_bytes  # noqa: E402
from resist.models import create_model  # noqa: E402

CODECS = ("fp16", "bf16", "q8", "q4", "q2", "q1", "topk", "randk")


def main() -> None:
    args = parser(__doc__, width=0.125, workers=4, local_iters=25, reps=20, name="codec_speed").parse_args()
    torch.set_num_threads(1)
    start = library_state()
    model = create_model("paper_resnet101", num_classes=10, width=args.width)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # (P,) float32
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_s = median_s(lambda: sgd_step(model, x, y, opt), max(5, args.reps // 4))
    round_s = args.local_iters * step_s
    rows = []
    for name in CODECS:
        codec = make_codec(name)
        payload = codec.encode(flat, (0, 0))
        enc = median_s(lambda: codec.encode(flat, (0, 0)), args.reps)
        dec = median_s(lambda: codec.decode(payload, flat.numel(), (0, 0)), args.reps)
        rows.append({"codec": name, "payload_bytes": payload_bytes(payload), "encode_s": enc, "decode_s": dec,
                     "encode_gb_s": flat.numel() * 4 / enc / 1e9, "decode_gb_s": flat.numel() * 4 / dec / 1e9,
                     "round_share": (enc + args.workers * dec) / round_s})
        print(rows[-1], flush=True)
    lines = ["# Codec throughput and cost per round\n",
             f"One thread. {flat.numel():,} float32 parameters (paper ResNet101 at width {args.width:g}); a round = "
             f"{args.local_iters} steps of the whole model at batch 128, {round_s:.2f} s here. Cost per round = encode "
             f"once + decode {args.workers} times (a worker's share of a compressed all-reduce). GB/s of float32 input.\n",
             *table(["codec", "payload (MB)", "encode (GB/s)", "decode (GB/s)", "cost / round"],
                    [[r["codec"], f"{r['payload_bytes'] / 1e6:.3f}", f"{r['encode_gb_s']:.2f}", f"{r['decode_gb_s']:.2f}",
                      f"{r['round_share']:.2%}"] for r in rows])]
    record(args.name, {"args": vars(args), "step_s": step_s, "rows": rows}, lines, command(), environment(start))


if __name__ == "__main__":
    main()
