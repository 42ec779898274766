"""Per-worker memory of ResIST vs local SGD on real processes (paper §2.5, Fig. 3: a worker holds only
its sub-ResNet).

Two figures per worker, from each run's summary.json: the model state it held at its largest
(parameters, gradients, BatchNorm buffers, optimizer state: exact bytes of the tensors) and the
process's peak resident memory (max RSS; on a GPU, CUDA max allocated), which adds activations, the
data and the framework. Synthetic 32x32 data, a few rounds, so only memory is meaningful here. Max over
workers; gloo processes.

    python experiments/micro/memory.py [--width 1.0] [--workers 2 4] [--batch 32]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, library_state, parser, record, table  # noqa: E402
from resist.presets import preset  # noqa: E402
from resist.data import load_dataset  # noqa: E402
from resist.train import train  # noqa: E402


def main() -> None:
    args = parser(__doc__, model="paper_resnet101", width=1.0, workers=[2, 4], batch=32, name="memory").parse_args()
    start = library_state()
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
    ref = {r["workers"]: max(r["state_mb"]) for r in rows if r["algo"] == "local_sgd"}
    lines = ["# Memory per worker: ResIST vs local SGD\n",
             "Model state = parameters + gradients + BatchNorm buffers + momentum a worker held at its largest (exact "
             "tensor bytes); peak = the process's max resident set (activations, data and the framework included). "
             "Max over workers.\n",
             *table(["workers", "algorithm", "model state / worker", "ResIST / local SGD", "peak RSS / worker"],
                    [[r["workers"], r["algo"], f"{max(r['state_mb']):.0f} MB", f"{max(r['state_mb']) / ref[r['workers']]:.2f}",
                      f"{max(r['peak_mb']):.0f} MB"] for r in rows])]
    record(args.name, {"args": vars(args), "rows": rows}, lines, command(), environment(start))


if __name__ == "__main__":
    main()
