"""Real CIFAR-10 results (paper Tables 2, 4, 7 and 9, Figs. 6, 7 and 8, scaled down), through the released CLI.

Parts (``--parts``), each a table of docs/results/NAME_tables.md (raw numbers and every run's command
in NAME.json):

* ``main``: ResIST vs local SGD vs data parallel for every worker count and seed: best test accuracy,
  parallel-equivalent time to the best and to a common target (local SGD's mean best minus 1 point),
  MB sent per worker; the gap over time; a projection to 1/10/100 Gbit/s links.
* ``ablations`` (Fig. 6, Fig. 7, Table 7): naive partitioning, no activation scaling, the post-activation
  model, a minimum depth; a local-iteration sweep for ResIST and local SGD; shallow ensembles.
* ``outer``: DiLoCo's outer Nesterov step (lr 0.7, momentum 0.9) against plain averaging at 1x, 2x, 4x
  the preset's local iterations.
* ``compress`` (Table 9, Fig. 8): quantized weights or updates, sparsified updates, at 4 workers.

    python experiments/run.py cifar10 --data-dir ../shared/data/cifar10 --parts main ablations \\
        --workers 2 4 --seeds 0 1 --ablation-seeds 0 --runs runs/cifar10 --name cifar10
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import common
from common import Spec, gap, main_table, options, projection_table, public, record, spread, table

ALGOS = ("resist", "local_sgd", "data_parallel")
RUNS = "runs/cifar10"


def add_arguments(ap) -> None:
    options(ap, preset="cifar10_cpu", parts=(["main"], None, ("main", "ablations", "outer", "compress")),
            workers=[2, 4], seeds=[0, 1], algos=(list(ALGOS), "algorithms of the main part", ALGOS), ablation_seeds=[0],
            name="cifar10")


def run_flags(algo: str, workers: int, seed: int, *flags: str) -> list[str]:
    return ["--algo", algo, "--workers", str(workers), "--seed", str(seed), *flags]


def main_specs(preset: str, workers, seeds, algos=ALGOS) -> list[Spec]:
    return [Spec(f"{algo}_w{w}_s{seed}", preset, run_flags(algo, w, seed), algo)
            for w in workers for seed in seeds for algo in algos]


# (label, workers, flags), most telling first: a suite cut short still has the design ablations. The
# paper ran those with 2 sub-ResNets and the minimum-depth one with 8 (Fig. 6); 4 is the most this CPU
# suite affords.
ABLATIONS = [
    ("naive partition (all blocks)", 2, ["--partition", "naive"]),
    ("no activation scaling", 2, ["--no-scale"]),
    ("post-activation ResNet101", 2, ["--model", "paper_resnet101_post"]),
    ("minimum depth 8", 4, ["--min-depth", "8"]),
    ("shallow ensemble", 2, ["--algo", "ensemble"]),
    ("local iters 100", 2, ["--local-iters", "100"]),
    ("local iters 10", 2, ["--local-iters", "10"]),
    ("local SGD, local iters 100", 2, ["--algo", "local_sgd", "--local-iters", "100"]),
    ("shallow ensemble", 4, ["--algo", "ensemble"]),
    ("local SGD, local iters 10", 2, ["--algo", "local_sgd", "--local-iters", "10"]),
]
OUTER_FLAGS = ["--outer-lr", "0.7", "--outer-momentum", "0.9"]  # DiLoCo (Douillard et al. 2023)
# Compression at 4 workers as the paper's Fig. 8, most telling first; ``True`` marks the main points, run
# with every seed (the rest with the first seed only). Sparsification keeps 25% of the *update* (top-k
# with error feedback; random-k, rescaled by 4 to stay unbiased, cannot take error feedback): the paper
# keeps 25% of the weights it sends, which says nothing about the other 75%; a dropped update entry keeps
# the round-start value (and with top-k its residual is sent later), which is the reading that can train.
UPDATE_EF = ["--compress-what", "update", "--error-feedback"]
COMPRESSION = [
    ("ResIST", True, ["--algo", "resist"]),
    ("local SGD", True, ["--algo", "local_sgd"]),
    ("ResIST, weights q8", True, ["--algo", "resist", "--compress", "q8"]),
    ("ResIST, weights q4", True, ["--algo", "resist", "--compress", "q4"]),
    ("ResIST, update q8 + EF", True, ["--algo", "resist", "--compress", "q8", *UPDATE_EF]),
    ("ResIST, update q4 + EF", True, ["--algo", "resist", "--compress", "q4", *UPDATE_EF]),
    ("ResIST, update q2 + EF", False, ["--algo", "resist", "--compress", "q2", *UPDATE_EF]),
    ("ResIST, weights q6", False, ["--algo", "resist", "--compress", "q6"]),
    ("ResIST, weights q5", False, ["--algo", "resist", "--compress", "q5"]),
    ("ResIST, update top-25% + EF", False, ["--algo", "resist", "--compress", "topk", *UPDATE_EF]),
    ("ResIST, update random-25%", False, ["--algo", "resist", "--compress", "randk", "--compress-what", "update"]),
    ("local SGD, update q8 + EF", False, ["--algo", "local_sgd", "--compress", "q8", *UPDATE_EF]),
    ("data parallel", False, ["--algo", "data_parallel"]),
    ("data parallel, gradients q8 + EF", False, ["--algo", "data_parallel", "--compress", "q8", "--error-feedback"]),
]


def specs(args) -> list[Spec]:
    from resist.presets import preset

    p, out = args.preset, []
    if "main" in args.parts:
        out += main_specs(p, args.workers, args.seeds, args.algos)
    if "ablations" in args.parts:
        for seed in args.ablation_seeds:
            for label, w, flags in ABLATIONS:
                name = "abl_" + "".join(c if c.isalnum() else "_" for c in label).strip("_") + f"_w{w}_s{seed}"
                algo = [] if "--algo" in flags else ["--algo", "resist"]
                out.append(Spec(name, p, [*algo, "--workers", str(w), "--seed", str(seed), *flags], label, "ablations"))
    if "outer" in args.parts:
        base = preset(p).algo.local_iters
        for seed in args.seeds:
            for iters in (base, 2 * base, 4 * base):
                for w in args.workers:
                    for algo in ("resist", "local_sgd"):
                        for outer in (False, True):
                            label = f"{algo}, {iters} local iters, " + ("outer Nesterov 0.7/0.9" if outer else "averaging")
                            out.append(Spec(f"outer_{algo}_i{iters}_{'o' if outer else 'a'}_w{w}_s{seed}", p,
                                            run_flags(algo, w, seed, "--local-iters", str(iters),
                                                      *(OUTER_FLAGS if outer else [])), label, "outer"))
    if "compress" in args.parts:
        w = max(args.workers)
        for k, seed in enumerate(args.seeds):
            out += [Spec("cmp_" + "_".join(re.findall(r"[a-z0-9]+", label.lower())) + f"_w{w}_s{seed}", p,
                         [*flags, "--workers", str(w), "--seed", str(seed)], label, "compress")
                    for label, main, flags in COMPRESSION if k == 0 or main]
    return out


def versus(runs: list[dict], base: dict) -> list[float]:
    """Best accuracy of each run minus that of the run in ``base`` (by seed) with the same seed."""
    return [r["best_acc"] - base[r["seed"]]["best_acc"] for r in runs if r["seed"] in base]


def gap_table(runs: list[dict]) -> list[str]:
    """ResIST's test accuracy minus local SGD's at each evaluation (same workers and seed; both evaluate
    at the same epochs), averaged over the seeds that have both."""
    lines = []
    for w in sorted({r["workers"] for r in runs}):
        pairs = []
        for seed in sorted({r["seed"] for r in runs}):
            got = {r["algo"]: r["run"] for r in runs if (r["workers"], r["seed"]) == (w, seed)}
            if "resist" in got and "local_sgd" in got:
                pairs.append(gap(got["local_sgd"], got["resist"]))
        if not pairs:
            continue
        epochs = sorted(set.intersection(*(set(p) for p in pairs)))
        lines += [f"Workers {w}, {len(pairs)} seed(s): ResIST - local SGD, test accuracy points, by epoch\n",
                  *table(["epoch", *(f"{e:.2f}" for e in epochs)],
                         [["gap", *(f"{statistics.fmean(p[e] for p in pairs):+.2f}" for e in epochs)]]), ""]
    return lines


def grouped(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """The runs by ``keys``, in the order they first appear."""
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def ablation_table(runs: list[dict], reference: list[dict]) -> list[str]:
    """One row per variant, against the main part's ResIST / local SGD at the same workers and seeds."""
    rows = []
    for (label, w), group in grouped(runs, "label", "workers").items():
        algo = "local_sgd" if group[0]["algo"] == "local_sgd" else "resist"
        deltas = versus(group, {r["seed"]: r for r in reference if r["algo"] == algo and r["workers"] == w})
        rows.append([label, w, len(group), spread(r["best_acc"] for r in group), f"{spread(deltas)} ({algo})",
                     spread(r["time_to_best_s"] for r in group), spread(r["sent_mb"] for r in group)])
    return table(["variant", "workers", "seeds", "best test acc (%)", "vs. reference (points)", "time to best (s)",
                  "MB sent / worker"], rows)


def outer_table(runs: list[dict]) -> list[str]:
    """One row per (workers, algorithm, local iterations, averaging or outer step), over seeds."""
    rows = []
    for (w, label), group in grouped(runs, "workers", "label").items():
        base = {r["seed"]: r for r in runs if r["workers"] == w
                and r["label"] == label.replace("outer Nesterov 0.7/0.9", "averaging")}
        rows.append([w, label, len(group), spread(r["best_acc"] for r in group),
                     spread(versus(group, base)) if "outer" in label else "-",
                     spread(r["time_to_best_s"] for r in group), spread(r["sent_mb"] for r in group)])
    return table(["workers", "variant", "seeds", "best test acc (%)", "vs. averaging (points)", "time to best (s)",
                  "MB sent / worker"], rows)


def compress_table(runs: list[dict]) -> list[str]:
    """Table 9 scaled down: per variant over seeds, the change against uncompressed ResIST of the same
    seed, and the bytes each worker sent against uncompressed local SGD's."""
    base = {r["seed"]: r for r in runs if r["label"] == "ResIST"}
    lsgd = {r["seed"]: r for r in runs if r["label"] == "local SGD"}
    rows = []
    for (label,), group in grouped(runs, "label").items():
        ratios = [r["sent_mb"] / lsgd[r["seed"]]["sent_mb"] for r in group if r["seed"] in lsgd]
        rows.append([label, len(group), spread(r["best_acc"] for r in group),
                     spread(versus(group, base)) if label != "ResIST" else "-", spread(r["final_acc"] for r in group),
                     spread(r["sent_mb"] for r in group), spread(ratios)])
    return table(["variant", "seeds", "best test acc (%)", "vs. ResIST (points)", "final test acc (%)",
                  "MB sent / worker", "bytes vs. local SGD"], rows)


def tabulate(args, results: list[dict], env: dict) -> None:
    part = {p: [r for r in results if r["suite"] == p] for p in ("main", "ablations", "outer", "compress")}
    cfg = results[0]["config"]
    lines = [f"# CIFAR-10 ({args.name})\n",
             f"Preset `{args.preset}`: {cfg['model']['name']} at width {cfg['model']['width']}, "
             f"{cfg['optim']['epochs']:g} epoch(s), {cfg['algo']['local_iters']} local steps per round, "
             f"batch {cfg['data']['batch_size']} per worker, lr {cfg['optim']['lr']}, amp {cfg['run'].get('amp', 'none')}"
             f"{', channels-last' if cfg['run'].get('channels_last') else ''}. "
             "In-process runtime; times are parallel-equivalent seconds (per round, the slowest "
             "worker's compute plus the synchronization, each measured while that worker alone held the "
             "cores); accuracy is on the whole CIFAR-10 test set; mean ± standard deviation over seeds. "
             "Each run's exact command is in the JSON beside this file.\n"]
    if part["main"]:
        lines += ["## Main comparison\n", *main_table(part["main"], ALGOS), ""]
        gaps = gap_table(part["main"])
        lines += ["## The gap over time\n", *gaps] if gaps else []
    if part["ablations"]:
        lines += ["## Ablations\n", *ablation_table(part["ablations"], part["main"]), ""]
    if part["outer"]:
        lines += ["## Outer optimization (DiLoCo) against plain averaging\n", *outer_table(part["outer"]), ""]
    if part["compress"]:
        from resist.analysis.plot import plot_runs

        runs = part["compress"]
        lines += [f"## Compression (paper Table 9), {runs[0]['workers']} workers\n", *compress_table(runs), ""]
        first = [r for r in runs if r["seed"] == runs[0]["seed"]]  # Fig. 8: accuracy against bytes, log scale
        fig = plot_runs([r["run"] for r in first], [r["label"] for r in first], common.RESULTS / f"{args.name}_fig8.png",
                        log_bytes=True)
        lines += [f"Fig. 8 (seed {runs[0]['seed']}, every variant): [{Path(fig).name}]({Path(fig).name})\n"]
    if part["main"]:
        lines += ["## PROJECTION (not a measurement): whole runs on 1, 10 and 100 Gbit/s links\n",
                  "Measured compute time plus each round's bytes (the slowest worker's larger direction, sent or received) over the link, 50 us per "
                  "message (`resist project`; its notes state the assumptions). Speed-up over local SGD "
                  "with the same workers and seed.\n", *projection_table(part["main"]), ""]
    record(args.name, {"preset": args.preset, "runs": [public(r) for r in results]}, lines, args.command, env,
           md=f"{args.name}_tables")

