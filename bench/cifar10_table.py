"""Real CIFAR-10 results (paper Tables 2, 4 and 7, Figs. 6 and 7, scaled down), through the released CLI.

Every run is one ``resist train PRESET ...`` process (``python -m resist.cli``, taking the library next to
this script), writing its own run folder; a folder that already holds a finished run with the same
config is reused, so an interrupted suite continues where it stopped. Then the tables are written to
docs/results/NAME.{md,json}:

* ``main``: ResIST vs local SGD vs data parallel for every worker count and seed: best test accuracy
  (mean ± standard deviation over seeds), parallel-equivalent time to the best accuracy and to a common
  target (local SGD's mean best minus 1 point, per worker count), and MB sent per worker.
* ``ablations`` (Fig. 6, Fig. 7, Table 7): ResIST with naive partitioning of every block, without
  activation scaling, on the post-activation model, with a minimum depth; a local-iteration sweep for
  ResIST and local SGD; independently trained shallow ensembles.

    python bench/cifar10_table.py --data-dir ../shared/data/cifar10 --suite main ablations \\
        --workers 2 4 --seeds 0 1 --ablation-seeds 0 --runs runs/cifar10 --name cifar10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchutil import OUT, ROOT, describe_library, library_state
from resist.analysis.projection import compare, project_run

ALGOS = ("resist", "local_sgd", "data_parallel")


@dataclass
class Spec:
    """One run: its folder name, the table it belongs to, its row label and its CLI flags."""

    name: str
    suite: str
    label: str
    workers: int
    seed: int
    flags: list[str]


def main_specs(workers: list[int], seeds: list[int], algos=ALGOS) -> list[Spec]:
    return [Spec(f"{algo}_w{w}_s{seed}", "main", algo, w, seed, ["--algo", algo, "--workers", str(w), "--seed", str(seed)])
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


# Outer optimization (DiLoCo, Douillard et al. 2023): its outer Nesterov SGD (lr 0.7, momentum 0.9) against
# plain averaging, at the preset's local iterations and at 2x and 4x them, where an outer optimizer is
# supposed to help most.
OUTER_FLAGS = ["--outer-lr", "0.7", "--outer-momentum", "0.9"]


def outer_specs(workers: list[int], seeds: list[int], base_iters: int) -> list[Spec]:
    specs = []
    for seed in seeds:
        for mult in (1, 2, 4):
            for w in workers:
                for algo in ("resist", "local_sgd"):
                    for outer in (False, True):
                        iters = base_iters * mult
                        label = f"{algo}, {iters} local iters, " + ("outer Nesterov 0.7/0.9" if outer else "averaging")
                        name = f"outer_{algo}_i{iters}_{'o' if outer else 'a'}_w{w}_s{seed}"
                        specs.append(Spec(name, "outer", label, w, seed,
                                          ["--algo", algo, "--workers", str(w), "--seed", str(seed),
                                           "--local-iters", str(iters), *(OUTER_FLAGS if outer else [])]))
    return specs


def outer_table(runs: list[dict]) -> list[str]:
    """One row per (workers, algorithm, local iterations, averaging or outer step), over seeds."""
    lines = ["| workers | variant | seeds | best test acc (%) | vs. averaging (points) | time to best (s) | "
             "MB sent / worker |", "|---|---|---|---|---|---|---|"]
    seen: list[tuple[int, str]] = []
    for r in runs:
        if (r["workers"], r["label"]) not in seen:
            seen.append((r["workers"], r["label"]))
    for w, label in seen:
        group = [r for r in runs if (r["workers"], r["label"]) == (w, label)]
        base = {r["seed"]: r["best_acc"] for r in runs
                if r["workers"] == w and r["label"] == label.replace("outer Nesterov 0.7/0.9", "averaging")}
        deltas = [r["best_acc"] - base[r["seed"]] for r in group if r["seed"] in base]
        lines.append(f"| {w} | {label} | {len(group)} | {spread([r['best_acc'] for r in group])} | "
                     f"{spread(deltas) if deltas and 'outer' in label else '-'} | "
                     f"{spread([r['time_to_best_s'] for r in group])} | {spread([r['sent_mb'] for r in group])} |")
    return lines


# Compression (paper Appendix A.5, Table 9, Fig. 8), at 4 workers as the paper's Fig. 8. Most telling first,
# so a suite cut short still has them; ``True`` marks the main points, run with every seed of --seeds (the
# rest with the first seed only). Sparsification keeps 25% of the *update* (top-k with error feedback;
# random-k, rescaled by 4 to stay unbiased, cannot take error feedback): the paper keeps 25% of the
# weights it sends, which says nothing about the other 75%; a dropped update entry keeps the round-start
# value (and with top-k its residual is sent later), which is the reading that can train.
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


def compress_specs(workers: int, seeds: list[int]) -> list[Spec]:
    specs = []
    for k, seed in enumerate(seeds):
        for label, main, flags in COMPRESSION:
            if k == 0 or main:
                name = "cmp_" + "_".join(re.findall(r"[a-z0-9]+", label.lower())) + f"_w{workers}_s{seed}"
                specs.append(Spec(name, "compress", label, workers, seed,
                                  [*flags, "--workers", str(workers), "--seed", str(seed)]))
    return specs


def compress_table(runs: list[dict]) -> list[str]:
    """Table 9 scaled down: one row per variant over seeds, with the change against uncompressed ResIST
    of the same seed and the bytes each worker sent against uncompressed local SGD's."""
    base = {r["seed"]: r for r in runs if r["label"] == "ResIST"}
    lsgd = {r["seed"]: r for r in runs if r["label"] == "local SGD"}
    lines = ["| variant | seeds | best test acc (%) | vs. ResIST (points) | final test acc (%) | MB sent / worker | "
             "bytes vs. local SGD |", "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["label"] for r in runs):
        group = [r for r in runs if r["label"] == label]
        deltas = [r["best_acc"] - base[r["seed"]]["best_acc"] for r in group if r["seed"] in base]
        ratios = [r["sent_mb"] / lsgd[r["seed"]]["sent_mb"] for r in group if r["seed"] in lsgd]
        lines.append(f"| {label} | {len(group)} | {spread([r['best_acc'] for r in group])} | "
                     f"{spread(deltas) if label != 'ResIST' and deltas else '-'} | "
                     f"{spread([r['final_acc'] for r in group])} | {spread([r['sent_mb'] for r in group])} | "
                     f"{spread(ratios) if ratios else '-'} |")
    return lines


def compress_figure(runs: list[dict], out: Path) -> Path:
    """Paper Fig. 8: test accuracy against cumulative bytes per worker (log scale), the first seed's runs."""
    from resist.analysis.plot import plot_runs, read_run

    first = [r for r in runs if r["seed"] == runs[0]["seed"]]
    return plot_runs([read_run(r["dir"], need_eval=True) for r in first], [r["label"] for r in first], out,
                     log_bytes=True)


def ablation_specs(seeds: list[int]) -> list[Spec]:
    specs = []
    for seed in seeds:
        for label, w, flags in ABLATIONS:
            name = "abl_" + "".join(c if c.isalnum() else "_" for c in label).strip("_") + f"_w{w}_s{seed}"
            algo = [] if "--algo" in flags else ["--algo", "resist"]
            specs.append(Spec(name, "ablations", label, w, seed, [*algo, "--workers", str(w), "--seed", str(seed), *flags]))
    return specs


def run(spec: Spec, preset: str, data_dir: str, runs: Path, extra: list[str]) -> Path:
    """Train ``spec`` with the CLI unless its folder already holds that finished run; a run of the same
    command that was interrupted continues from its latest checkpoint (``resist train --resume``)."""
    out = runs / spec.name
    argv = [sys.executable, "-m", "resist.cli", "train", preset, *spec.flags, "--data-dir", data_dir,
            "--out", str(out), *extra]
    record = " ".join(["resist", *argv[3:]])
    done, started, wall = out / "summary.json", out / "command.pending", out / "wall_s.txt"
    if done.is_file() and (out / "command.txt").is_file() and (out / "command.txt").read_text() == record:
        print(f"[suite] reusing {out}", flush=True)
        return out
    before = 0.0
    if started.is_file() and started.read_text() == record and list((out / "checkpoints").glob("round_*.pt")):
        argv = [*argv[:4], "--resume", str(out)]
        before = float(wall.read_text()) if wall.is_file() else 0.0
        print(f"[suite] resuming {out}", flush=True)
    else:
        print(f"[suite] {record}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        started.write_text(record)
        argv.append("--force")  # this command replaces whatever run the folder held (not in the record)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate()
    finally:  # wall time so far, also when this suite is stopped: a resumed run adds to it
        wall.parent.mkdir(parents=True, exist_ok=True)
        wall.write_text(f"{before + time.perf_counter() - t0:.1f}\n")
    if proc.returncode != 0:
        raise SystemExit(f"cifar10_table: {record} failed: {err.strip().splitlines()[-1:]}")
    (out / "command.txt").write_text(record)
    return out


def collect(spec: Spec, run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wall = run_dir / "wall_s.txt"
    # A language model's headline is bits per byte (lower is better); the tables of this file read
    # best_acc / final_acc / curve, so an LM run fills best_bpb / final_bpb and a bits-per-byte curve.
    metric, key = ("test_bpb", "bpb") if cfg.get("data", {}).get("task") == "lm" else ("test_acc", "acc")
    return {"name": spec.name, "suite": spec.suite, "label": spec.label, "dir": str(run_dir),
            "command": (run_dir / "command.txt").read_text(), "algo": summary["algo"], "workers": summary["workers"],
            "seed": cfg["run"]["seed"], f"best_{key}": summary[f"best_{key}"], f"final_{key}": summary[f"final_{key}"],
            "time_to_best_s": summary["time_to_best_s"], "time_s": summary["time_s"],
            "wall_s": float(wall.read_text()) if wall.is_file() else None,
            "sent_mb": max(summary["sent_bytes_per_worker"]) / 1e6,
            "curve": [(r["time_s"], r[metric]) for r in rows if r.get(metric) is not None],
            "config": cfg, "rows": rows}


def time_to(curve: list, target: float, higher_is_better: bool = True) -> float | None:
    """Parallel-equivalent seconds until the first evaluation at or better than ``target``."""
    return next((t for t, score in curve if (score >= target if higher_is_better else score <= target)), None)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def main_table(runs: list[dict]) -> list[str]:
    lines = ["| workers | algorithm | seeds | best test acc (%) | time to best (s) | time to target (s) | "
             "MB sent / worker | wall time (s) |", "|---|---|---|---|---|---|---|---|"]
    for w in sorted({r["workers"] for r in runs}):
        ref = [r["best_acc"] for r in runs if r["workers"] == w and r["algo"] == "local_sgd"]
        target = statistics.fmean(ref) - 1.0 if ref else None
        for algo in ALGOS:
            group = [r for r in runs if r["workers"] == w and r["algo"] == algo]
            if not group:
                continue
            reached = [t for t in (time_to(r["curve"], target) for r in group) if t is not None] if ref else []
            to_target = ("-" if not ref else spread(reached) if len(reached) == len(group)
                         else f"{spread(reached)} ({len(reached)}/{len(group)} reached)")
            lines.append(
                f"| {w} | {algo} | {len(group)} | {spread([r['best_acc'] for r in group])} | "
                f"{spread([r['time_to_best_s'] for r in group])} | {to_target} | "
                f"{spread([r['sent_mb'] for r in group])} | {spread([r['wall_s'] for r in group if r['wall_s']])} |")
        if target is not None:
            lines.append(f"| {w} | *target* | | local SGD's best - 1 = {target:.2f} | | | | |")
    return lines


def gap_table(runs: list[dict]) -> list[str]:
    """ResIST's test accuracy minus local SGD's at each evaluation (same workers and seed; both evaluate
    at the same epochs), averaged over the seeds that have both."""
    lines = []
    for w in sorted({r["workers"] for r in runs}):
        pairs = []
        for seed in sorted({r["seed"] for r in runs}):
            got = {r["algo"]: r for r in runs if (r["workers"], r["seed"]) == (w, seed)}
            if "resist" in got and "local_sgd" in got:
                acc = {a: {round(row["epoch"], 3): row["test_acc"] for row in got[a]["rows"]
                           if row.get("test_acc") is not None} for a in ("resist", "local_sgd")}
                pairs.append({e: acc["resist"][e] - acc["local_sgd"][e] for e in acc["resist"] if e in acc["local_sgd"]})
        if not pairs:
            continue
        epochs = sorted(set.intersection(*(set(p) for p in pairs)))
        lines += [f"Workers {w}, {len(pairs)} seed(s): ResIST - local SGD, test accuracy points, by epoch\n",
                  "| epoch | " + " | ".join(f"{e:.2f}" for e in epochs) + " |", "|---|" + "---|" * len(epochs),
                  "| gap | " + " | ".join(f"{statistics.fmean(p[e] for p in pairs):+.2f}" for e in epochs) + " |", ""]
    return lines


def ablation_table(runs: list[dict], reference: list[dict]) -> list[str]:
    """One row per variant, with the main suite's ResIST / local SGD at the same worker count and seeds
    as the reference it differs from."""
    lines = ["| variant | workers | seeds | best test acc (%) | vs. reference (points) | time to best (s) | "
             "MB sent / worker |", "|---|---|---|---|---|---|---|"]
    seen: list[tuple[str, int]] = []
    for r in runs:
        if (r["label"], r["workers"]) not in seen:
            seen.append((r["label"], r["workers"]))
    for label, w in seen:
        group = [r for r in runs if (r["label"], r["workers"]) == (label, w)]
        base_algo = "local_sgd" if group[0]["algo"] == "local_sgd" else "resist"
        base = {r["seed"]: r["best_acc"] for r in reference if r["algo"] == base_algo and r["workers"] == w}
        deltas = [r["best_acc"] - base[r["seed"]] for r in group if r["seed"] in base]
        lines.append(f"| {label} | {w} | {len(group)} | {spread([r['best_acc'] for r in group])} | "
                     f"{spread(deltas) if deltas else '-'} ({base_algo}) | "
                     f"{spread([r['time_to_best_s'] for r in group])} | {spread([r['sent_mb'] for r in group])} |")
    return lines


def projection_table(runs: list[dict], gbits=(1.0, 10.0, 100.0), latency_us: float = 50.0) -> list[str]:
    """PROJECTION, not a measurement (``resist project``): each run's measured compute time plus the bytes
    its slowest worker sent over a link of ``gbits``, with ``latency_us`` per message; speed-up over local
    SGD with the same workers and seed."""
    lines = ["| workers | seed | algorithm | measured (s) | " + " | ".join(f"{g:g} Gbit/s (s, speed-up)" for g in gbits)
             + " |", "|---|---|---|---|" + "---|" * len(gbits)]
    for w in sorted({r["workers"] for r in runs}):
        for seed in sorted({r["seed"] for r in runs if r["workers"] == w}):
            group = sorted((r for r in runs if (r["workers"], r["seed"]) == (w, seed)),
                           key=lambda r: ("local_sgd", "resist", "data_parallel").index(r["algo"]))
            if not group or group[0]["algo"] != "local_sgd":
                continue
            proj = compare([project_run(r["rows"], r["algo"], gbits, latency_us, r["algo"]) for r in group])
            for r, pr in zip(group, proj):
                lines.append(f"| {w} | {seed} | {r['algo']} | {pr.measured_s:.1f} | " + " | ".join(
                    f"{pr.projected_s[g]:.1f} ({pr.speedup[g]:.2f}x)" for g in gbits) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"))
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--suite", nargs="+", choices=("main", "ablations", "outer", "compress"), default=["main"])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS), help="algorithms of the main suite")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", default="runs/cifar10", help="folder for the run folders")
    ap.add_argument("--only-existing", action="store_true", help="tabulate the finished runs; train nothing")
    ap.add_argument("--name", default="cifar10")
    ap.add_argument("extra", nargs="*", help="more `resist train` flags for every run, after --")
    args = ap.parse_args()
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"cifar10_table: data folder {args.data_dir} does not exist; pass --data-dir or set RESIST_DATA_DIR")

    from resist.config import preset

    specs = (main_specs(args.workers, args.seeds, args.algos) if "main" in args.suite else []) + \
        (ablation_specs(args.ablation_seeds) if "ablations" in args.suite else []) + \
        (outer_specs(args.workers, args.seeds, preset(args.preset).algo.local_iters) if "outer" in args.suite else []) + \
        (compress_specs(max(args.workers), args.seeds) if "compress" in args.suite else [])
    runs_dir = Path(args.runs)
    start = library_state()
    results = []
    for spec in specs:
        if args.only_existing:
            out = runs_dir / spec.name
            if not (out / "summary.json").is_file():
                continue
        else:
            out = run(spec, args.preset, args.data_dir, runs_dir, args.extra)
        results.append(collect(spec, out))
    if not results:
        raise SystemExit(f"cifar10_table: no finished runs under {runs_dir}")
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
           "library": describe_library(start, library_state()),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    main_runs = [r for r in results if r["suite"] == "main"]
    abl_runs = [r for r in results if r["suite"] == "ablations"]
    outer_runs = [r for r in results if r["suite"] == "outer"]
    compress_runs = [r for r in results if r["suite"] == "compress"]
    cfg = results[0]["config"]
    lines = [f"# CIFAR-10 ({args.name})\n",
             f"Preset `{args.preset}`: {cfg['model']['name']} at width {cfg['model']['width']}, "
             f"{cfg['optim']['epochs']:g} epoch(s), {cfg['algo']['local_iters']} local steps per round, "
             f"batch {cfg['data']['batch_size']} per worker, lr {cfg['optim']['lr']}, amp {cfg['run'].get('amp', 'none')}"
             f"{', channels-last' if cfg['run'].get('channels_last') else ''}. "
             f"{'One ' + env['gpu'] + ' (CUDA ' + str(torch.version.cuda) + '), ' if env['gpu'] else ''}"
             f"{env['machine']} CPU with {env['cores']} cores, torch {env['torch']}, Python {env['python']}, library {env['library']}, "
             f"{env['date']}. In-process runtime; times are parallel-equivalent seconds (per round, the slowest "
             "worker's compute plus the synchronization, each measured while that worker alone held the "
             "cores); accuracy is on the whole CIFAR-10 test set; mean ± standard deviation over seeds. "
             "Each run's exact command is in the JSON beside this file.\n"]
    if main_runs:
        lines += ["## Main comparison\n", *main_table(main_runs), ""]
        gaps = gap_table(main_runs)
        if gaps:
            lines += ["## The gap over time\n", *gaps]
    if abl_runs:
        lines += ["## Ablations\n", *ablation_table(abl_runs, main_runs), ""]
    if outer_runs:
        lines += ["## Outer optimization (DiLoCo) against plain averaging\n", *outer_table(outer_runs), ""]
    if compress_runs:
        lines += [f"## Compression (paper Table 9), {compress_runs[0]['workers']} workers\n", *compress_table(compress_runs), ""]
        fig = compress_figure(compress_runs, OUT / f"{args.name}_fig8.png")
        lines += [f"Fig. 8 (seed {compress_runs[0]['seed']}, every variant): [{fig.name}]({fig.name})\n"]
    if main_runs:
        lines += ["## PROJECTION (not a measurement): whole runs on 1, 10 and 100 Gbit/s links\n",
                  "Measured compute time plus each round's bytes (the slowest worker's larger direction, sent or received) over the link, 50 us per "
                  "message (`resist project`; its notes state the assumptions). Speed-up over local SGD "
                  "with the same workers and seed.\n", *projection_table(main_runs), ""]
    OUT.mkdir(parents=True, exist_ok=True)
    body = {"env": env, "preset": args.preset,
            "runs": [{k: v for k, v in r.items() if k not in ("config", "rows")} for r in results]}
    tmp = OUT / f".{args.name}.json.tmp"
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(OUT / f"{args.name}.json")
    (OUT / f"{args.name}_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
