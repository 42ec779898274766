"""Finished runs' final models re-evaluated under each BatchNorm choice (issue 20, part 3).

ResIST's evaluation network averages the holders' BatchNorm running statistics (``--bn-eval average``,
the default); the authors' code (dunchen/ResIST_release) has no running statistics and normalizes with
each test batch's own (``batch``); a third choice re-estimates them on training batches of rank 0's
shard, unaugmented (``recalibrate``). Whether the choice explains ResIST's gap to local SGD is a matter
of evaluating the same final weights (each run folder's model.pt, its config.json and, for ResIST, the
evaluation scale in summary.json) every way: no training, so the figures are exact.

    OMP_NUM_THREADS=1 python experiments/micro/bn_eval.py --data-dir ../shared/data/cifar10 \\
        --runs runs/tta/base_lsgd_w4_s0 runs/tta/base_resist_w4_s0
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, library_state, parser, record, table  # noqa: E402
from resist.data import load_dataset  # noqa: E402
from resist.data.sharding import eval_batches  # noqa: E402
from resist.models import create_model  # noqa: E402
from resist.tasks.evaluation import accuracy  # noqa: E402


def load_run(folder: Path, classes: int) -> tuple[torch.nn.Module, dict]:
    """The run's final global model, ready for evaluation (ResIST's branches scaled as its evaluation
    scales them), with its summary; ``classes``: the dataset's, unless the config names a count."""
    cfg = json.loads((folder / "config.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    m = cfg["model"]
    model = create_model(m["name"], num_classes=m["num_classes"] or classes, width=m["width"],
                         **({"layers": tuple(m["layers"])} if m.get("layers") else {}))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    if summary.get("eval_scale", 1.0) != 1.0:
        model.set_residual_scale(summary["scaled_blocks"], summary["eval_scale"])
    return model, summary


def scores(model, cfg: dict, data, batch_sizes: list[int], recal: list[int]) -> dict[str, float]:
    """Test accuracy (%) of ``model`` with running statistics, test-batch statistics at each of
    ``batch_sizes``, and statistics recalibrated on each of ``recal`` training batches."""
    cpu = torch.device("cpu")
    test = lambda bs=500: eval_batches(data.test, data.mean, data.std, bs)  # noqa: E731
    out = {"average": accuracy(model, test(), "average", None, cpu)}
    out |= {f"batch {b}": accuracy(model, test(b), "batch", None, cpu) for b in batch_sizes}
    plain = data.train_stream(cfg["algo"]["workers"], 0, cfg["data"]["batch_size"], cfg["run"]["seed"] + 1,
                              augment=False)
    for n in recal:
        out[f"recalibrated {n}"] = accuracy(copy.deepcopy(model), test(), "recalibrate",
                                            lambda n=n: (plain.batch(k) for k in range(n)), cpu)
    return out


def gaps(rows: list[dict], modes: list[str]) -> list[list[str]]:
    """Per seed with both a local SGD and a ResIST run (same workers): ResIST minus local SGD, per mode."""
    out = []
    for r in rows:
        if r["algo"] != "resist":
            continue
        base = [b for b in rows if b["algo"] == "local_sgd" and (b["seed"], b["workers"]) == (r["seed"], r["workers"])]
        if base:
            out.append([r["run"], base[0]["run"], *(f"{r['scores'][m] - base[0]['scores'][m]:+.2f}" for m in modes)])
    return out


def main() -> None:
    args = parser(__doc__, data_dir=str, runs=[""], batch_sizes=([500, 100], "test-batch sizes for 'batch'"),
                  recal=([20, 200], "training batches for 'recalibrate'"), name="bn_eval").parse_args()
    start = library_state()
    folders = [Path(r) for r in args.runs]
    for f in folders:
        missing = [n for n in ("config.json", "summary.json", "model.pt") if not (f / n).is_file()]
        if missing:
            raise SystemExit(f"bn_eval: {f} is not a finished run folder (no {', '.join(missing)})")
    torch.manual_seed(0)
    rows, data = [], None
    for f in folders:
        cfg = json.loads((f / "config.json").read_text())
        if data is None:
            data = load_dataset(cfg["data"]["dataset"], args.data_dir)
        model, summary = load_run(f, data.num_classes)
        rows.append({"run": f.name, "algo": cfg["algo"]["name"], "seed": cfg["run"]["seed"],
                     "workers": cfg["algo"]["workers"], "final_logged": summary.get("final_acc"),
                     "scores": scores(model, cfg, data, args.batch_sizes, args.recal)})
        print(json.dumps(rows[-1]), flush=True)
    modes = list(rows[0]["scores"])
    lines = ["# Final models under each BatchNorm choice at evaluation\n",
             "Each run folder's model.pt evaluated on the CIFAR-10 test set (10,000 images) with: its averaged "
             "running statistics (*average*, what the runs logged), each test batch's own statistics at the "
             "batch size given (*batch N*, as the authors' code evaluates: its blocks keep no running "
             "statistics), and statistics re-estimated on N unaugmented training batches of rank 0's shard "
             "(*recalibrated N*). Same weights every way: the differences are the BatchNorm choice alone.\n",
             *table(["run", "algorithm", "seed", "logged final (%)", *(f"{m} (%)" for m in modes)],
                    [[r["run"], r["algo"], r["seed"], f"{r['final_logged']:.2f}" if r["final_logged"] is not None else "-",
                      *(f"{r['scores'][m]:.2f}" for m in modes)] for r in rows])]
    pairs = gaps(rows, modes)
    if pairs:
        lines += ["\nResIST minus local SGD (points), same seed and workers, per choice:\n",
                  *table(["ResIST run", "local SGD run", *modes], pairs)]
    record(args.name, {"rows": rows}, lines, command(), environment(start, threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
