"""Where the wall time of a training round goes: local compute, communication, framework overhead.

Issue target: framework overhead <= 5% of a round. For ResIST and local SGD on W gloo processes
(``resist.train.train`` with ``run.runtime="dist"``), paper ResNet101 at ``--width`` on CIFAR-10
(synthetic data of the same shape if no ``--data-dir``), ``local_iters`` steps per round, a few rounds,
evaluation only after the last round. From each run's ``metrics.jsonl`` (written by rank 0), per round:

- compute = ``compute_s`` (the local steps, data preparation included; max over ranks),
- communication = ``comm_s`` (``end_round``, after a barrier; max over ranks),
- overhead = wall time of the round - compute - communication, where the wall time is the difference of
  consecutive ``elapsed_s`` (rank 0's clock). It holds ``begin_round`` (optimizer rebuild, sub-network
  switch), the barrier, the per-round ``all_gather`` of the metrics row, the metrics write and the
  Python of the loop; with compute and comm both maxima over ranks, skew between ranks lands in it
  only where rank 0 waits longer than the slowest rank worked.

Round 0 (warm-up: allocator, first touch of the model) and the last round (it evaluates the global model)
are left out. Runs go one after another (each is a fresh set of processes), algorithms and worker counts
interleaved when ``--repeats`` > 1.

    python experiments/micro/round_breakdown.py [--data-dir DIR] [--workers 2 4] [--rounds 5] [--batch 128] [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, library_state, parser, record, table  # noqa: E402
from resist.presets import preset  # noqa: E402
from resist.data import load_dataset  # noqa: E402
from resist.train import trainer  # noqa: E402
from resist.train.metrics import read_metrics  # noqa: E402

PARTS = ("wall_s", "compute_s", "comm_s", "overhead_s")


def breakdown(rows: list[dict]) -> dict:
    """Per-round compute / comm / overhead from metrics.jsonl rows; round 0 and evaluated rounds left out."""
    per_round = []
    for prev, row in zip(rows, rows[1:]):
        if "test_acc" in row:  # this round's elapsed time includes an evaluation
            continue
        wall = row["elapsed_s"] - prev["elapsed_s"]
        per_round.append({"round": row["round"], "wall_s": wall, "compute_s": row["compute_s"],
                          "comm_s": row["comm_s"], "overhead_s": wall - row["compute_s"] - row["comm_s"]})
    if not per_round:
        raise SystemExit("no round left to measure: use --rounds >= 3")
    mean = {k: statistics.fmean(r[k] for r in per_round) for k in PARTS}
    pct = {k[:-2]: 100 * mean[k] / mean["wall_s"] for k in PARTS[1:]}
    return {"rounds": per_round, "mean": mean, "pct": pct,
            "overhead_pct_max_round": max(100 * r["overhead_s"] / r["wall_s"] for r in per_round)}


def data_prep_seconds(args, dataset) -> float:
    """Median seconds to prepare one training batch (index, normalize, augment), on one thread as a
    rank runs it: part of ``compute_s``, measured here apart to show how much of compute it is."""
    from resist.data import BatchStream

    if dataset is None:
        dataset = load_dataset("cifar10", args.data_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stream = BatchStream(dataset.train, dataset.mean, dataset.std, 2, 0, args.batch, 0, augment=True)
        times = []
        for step in range(25):
            t0 = time.perf_counter()
            stream.batch(step)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[5:])
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    args = parser(__doc__, data_dir=(os.environ.get("RESIST_DATA_DIR"), "CIFAR-10 folder (default $RESIST_DATA_DIR); "
                                     "synthetic data if absent"), algos=["resist", "local_sgd"], workers=[2, 4],
                  width=0.125, batch=(128, "per worker (paper: 128)"), local_iters=10,
                  rounds=(5, "run.max_rounds; rounds 1..rounds-2 are measured"), eval_limit=500, repeats=1,
                  target=(5.0, "overhead target, %% of a round"), quick=(False, "batch 32, 4 rounds (2 measured)"),
                  name="round_breakdown").parse_args()
    if args.quick:
        args.batch, args.rounds = 32, 4

    dataset, source = None, None
    if args.data_dir and Path(args.data_dir).is_dir():
        probe = load_dataset("cifar10", args.data_dir)  # fails loudly if the folder is not CIFAR-10
        source, n_train = probe.source, len(probe.train.y)
        del probe
        data = {"data.dataset": "cifar10", "data.data_dir": str(args.data_dir)}
    else:
        print(f"no CIFAR-10 folder ({args.data_dir!r}): using synthetic 32x32 data, 10 classes")
        dataset = load_dataset("synthetic", n_train=10_000, n_test=args.eval_limit, num_classes=10, size=32)
        source, n_train = dataset.source, len(dataset.train.y)
        data = {"data.dataset": "synthetic"}

    runs = []
    t_start, load_start, lib_start = time.perf_counter(), os.getloadavg(), library_state()
    with tempfile.TemporaryDirectory(prefix="round_breakdown_") as tmp:
        for rep in range(args.repeats):
            for w in args.workers:
                for algo in args.algos:
                    out = Path(tmp) / f"{algo}_w{w}_{rep}"
                    cfg = preset("cifar10_cpu").replace(**{
                        "algo.name": algo, "algo.workers": w, "algo.local_iters": args.local_iters,
                        "model.width": args.width, "data.batch_size": args.batch,
                        "data.eval_limit": args.eval_limit, "run.max_rounds": args.rounds,
                        "run.eval_every": 10**6, "run.runtime": "dist", "run.backend": "gloo",
                        "run.out": str(out), **data})
                    t0 = time.perf_counter()
                    summary = trainer.train(cfg, dataset)
                    total = time.perf_counter() - t0
                    rows = read_metrics(out / "metrics.jsonl")
                    b = breakdown(rows)
                    r0 = rows[0]
                    runs.append({"algo": algo, "workers": w, "repeat": rep, "train_call_s": total,
                                 "run_elapsed_s": summary["elapsed_s"],
                                 "round0_overhead_s": r0["elapsed_s"] - r0["compute_s"] - r0["comm_s"],
                                 "eval_round_extra_s": (rows[-1]["elapsed_s"] - rows[-2]["elapsed_s"]
                                                        - rows[-1]["compute_s"] - rows[-1]["comm_s"]),
                                 "metrics": rows, **b})
                    m = b["mean"]
                    print(f"{algo} W={w}: round {m['wall_s']:.2f}s = compute {m['compute_s']:.2f} + comm "
                          f"{m['comm_s']:.3f} + overhead {m['overhead_s']:.3f} ({b['pct']['overhead']:.1f}%) "
                          f"[train() {total:.0f}s]", flush=True)

    prep_s = data_prep_seconds(args, dataset)
    # One row per (algo, workers): the mean over repeats of the per-run means.
    table_rows = []
    for w in args.workers:
        for algo in args.algos:
            sel = [r for r in runs if r["algo"] == algo and r["workers"] == w]
            rounds = [x for r in sel for x in r["rounds"]]
            mean = {k: statistics.fmean(x[k] for x in rounds) for k in PARTS}
            table_rows.append({"algo": algo, "workers": w, "rounds_measured": len(rounds), **mean,
                               **{f"{k[:-2]}_pct": 100 * mean[k] / mean["wall_s"] for k in PARTS[1:]},
                               "overhead_pct_max_round": max(r["overhead_pct_max_round"] for r in sel),
                               "train_call_s": statistics.fmean(r["train_call_s"] for r in sel),
                               "outside_loop_s": statistics.fmean(r["train_call_s"] - r["run_elapsed_s"] for r in sel),
                               "round0_overhead_s": statistics.fmean(r["round0_overhead_s"] for r in sel),
                               "eval_round_extra_s": statistics.fmean(r["eval_round_extra_s"] for r in sel),
                               "data_prep_pct_of_compute": 100 * prep_s * args.local_iters / mean["compute_s"]})

    load = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    env = environment(lib_start, threads_per_rank={w: max(1, (os.cpu_count() or 1) // w) for w in args.workers},
                      dataset=source, n_train=n_train, backend="gloo", data_prep_s_per_batch=prep_s,
                      total_wall_s=time.perf_counter() - t_start, loadavg_1min_start_end=load)
    threads = ", ".join(f"{n} at W={w}" for w, n in env["threads_per_rank"].items())
    lines = ["# Round breakdown: compute, communication, framework overhead\n",
             f"Cores shared with other work (1-min load average {load[0]:.1f} at the start), torch threads per rank: "
             f"{threads}; gloo over loopback; total {env['total_wall_s']:.0f} s.\n",
             f"`resist.train.train` on the dist runtime (real gloo processes): paper_resnet101 at width "
             f"{args.width:g}, {source}, batch {args.batch} per worker, {args.local_iters} local steps per "
             f"round, {args.rounds} rounds, evaluation ({args.eval_limit} test images) only after the last "
             "round. Per round, from metrics.jsonl: compute = `compute_s` and comm = `comm_s` (maxima over "
             "ranks); overhead = wall time of the round (difference of consecutive `elapsed_s`) - compute "
             "- comm. Round 0 (warm-up) and the last round (evaluation) are left out; the mean over the "
             f"rounds left ({args.rounds - 2} per run, {args.repeats} run(s) per row)."
             + ("" if args.batch == 128 else f" Batch {args.batch}, smaller than the paper's 128, to save time.") + "\n",
             *table(["algo", "W", "rounds", "wall / round", "compute", "comm", "overhead", "overhead % (worst round)"],
                    [[t["algo"], t["workers"], t["rounds_measured"], f"{t['wall_s']:.2f} s",
                      f"{t['compute_s']:.2f} s ({t['compute_pct']:.1f}%)", f"{t['comm_s']:.3f} s ({t['comm_pct']:.1f}%)",
                      f"{t['overhead_s']:.3f} s", f"**{t['overhead_pct']:.1f}%** ({t['overhead_pct_max_round']:.1f}%)"]
                     for t in table_rows])]
    worst = max(t["overhead_pct"] for t in table_rows)
    lines += ["", f"Target: overhead <= {args.target:g}% of a round: worst row {worst:.1f}% -> "
              f"{'met' if worst <= args.target else 'NOT met'}.\n",
              f"Inside compute: preparing one batch (index, normalize, crop and flip; one thread, measured "
              f"apart in the parent) takes {prep_s * 1000:.1f} ms, i.e. "
              + ", ".join(f"{t['data_prep_pct_of_compute']:.1f}% of compute for {t['algo']} W={t['workers']}"
                          for t in table_rows)
              + " (measured without contention, so a lower bound where the ranks share cores, W = 4).\n",
              "Outside the measured rounds (not part of the target, for the record): *outside the loop* "
              "= the `train()` call minus rank 0's `elapsed_s` at the end (process start, imports, each "
              "rank loading the data set, saving the model, teardown); *round 0 overhead* = round 0's "
              "wall time - compute - comm (rank 0's clock starts when rank 0 is ready, so this includes "
              "waiting at the first barrier for ranks that finished starting up later); *evaluation* = the "
              "last round's wall time - compute - comm.\n",
              *table(["algo", "W", "train() call", "outside the loop", "round 0 overhead", "evaluation round extra"],
                     [[t["algo"], t["workers"], f"{t['train_call_s']:.1f} s", f"{t['outside_loop_s']:.1f} s",
                       f"{t['round0_overhead_s']:.2f} s", f"{t['eval_round_extra_s']:.2f} s"] for t in table_rows]),
              "", f"This machine has {env['cores']} cores: with W = 4, four single-threaded processes share them, "
              "so the compute column at W = 4 is inflated (about twice what it would be with a core per "
              "worker, more while other work runs on the machine), which makes overhead and communication "
              "look smaller as a share of the round.\n"]
    record(args.name, {"args": vars(args), "table": table_rows, "runs": runs}, lines, command(), env)


if __name__ == "__main__":
    main()
