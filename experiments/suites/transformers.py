"""Transformer results (issue 14), through the released CLI: ResIST vs local SGD for a byte-level GPT on
the Python standard library's sources and for ViT-tiny on CIFAR-10, at CPU scale.

Each suite is a preset plus fixed flags (below: what makes one run fit about 4 minutes on one shared
core). Runs, reuse and resume are ``cifar10_table.run``; the tables are written to docs/results/NAME.{md,json}
with a ``resist plot`` figure per worker count, and the run folders are copied beside them without
checkpoints. ResIST is also run without activation scaling (``--no-scale``; for ``--scale-seeds``, by
default every seed for gpt and none for vit): with no warm-up and no BatchNorm, the scale only enters
evaluation of the whole model, so the two runs train identically and the table checks that from their
training losses. The published files came from:

    python bench/transformers_table.py --suite gpt --workers 2 4 --seeds 0 1 --runs runs/transformers
    python bench/transformers_table.py --suite vit --workers 2 4 --seeds 0 1 --scale-seeds 0 1 \
        --data-dir ../shared/data/cifar10 --runs runs/transformers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchutil import OUT, ROOT, describe_library, git, library_state
from cifar10_table import Spec, collect, main_specs, projection_table, run, spread, time_to

SUITES = {
    "gpt": {
        "name": "gpt_char", "preset": "gpt_char_cpu", "title": "gpt_char on the Python standard library",
        # dim 64, context 64, batch 16, 1 MB of training text (one epoch, about 980 steps in all)
        "flags": ["--width", "0.25", "--context", "64", "--batch-size", "16", "--text-bytes", "1000000",
                  "--eval-limit", "512", "--eval-every", "2"],
    },
    "vit": {
        "name": "vit_cifar10", "preset": "cifar10_cpu", "title": "ViT-tiny on CIFAR-10",
        # ViT-tiny's 12 blocks at a quarter of its width (dim 48), half an epoch, AdamW + warm-up/cosine
        "flags": ["--model", "vit_tiny", "--width", "0.25", "--inner-optim", "adamw", "--lr", "1e-3",
                  "--weight-decay", "0.05", "--lr-schedule", "cosine", "--lr-warmup-epochs", "0.05",
                  "--batch-size", "64", "--epochs", "0.5", "--local-iters", "20", "--eval-limit", "2000",
                  "--eval-every", "2"],
    },
}
ALGOS = ("resist", "local_sgd")


def specs_for(workers: list[int], seeds: list[int], scale_seeds: list[int]) -> list[Spec]:
    """The comparison, then ResIST unscaled for ``scale_seeds`` (last: the least telling runs)."""
    return main_specs(workers, seeds, ALGOS) + [
        Spec(f"resist_noscale_w{w}_s{seed}", "noscale", "resist, no activation scaling", w, seed,
             ["--algo", "resist", "--no-scale", "--workers", str(w), "--seed", str(seed)])
        for seed in scale_seeds for w in workers]


def main_table(runs: list[dict], key: str, unit: str, higher: bool, target_delta: float) -> list[str]:
    """Per worker count: each algorithm's best and final score over seeds, the time to its best and to a
    common target (local SGD's mean best, worsened by ``target_delta``), the bytes and the wall time."""
    lines = [f"| workers | algorithm | seeds | best {unit} | final {unit} | time to best (s) | time to target (s) | "
             "MB sent / worker | wall time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for w in sorted({r["workers"] for r in runs}):
        ref = [r[f"best_{key}"] for r in runs if r["workers"] == w and r["algo"] == "local_sgd"]
        target = statistics.fmean(ref) + (-target_delta if higher else target_delta) if ref else None
        for algo in ALGOS:
            group = [r for r in runs if r["workers"] == w and r["algo"] == algo]
            if not group:
                continue
            reached = [t for t in (time_to(r["curve"], target, higher) for r in group) if t is not None] if ref else []
            to_target = ("-" if not ref else spread(reached) if len(reached) == len(group)
                         else f"{spread(reached)} ({len(reached)}/{len(group)} reached)")
            lines.append(f"| {w} | {algo} | {len(group)} | {spread([r[f'best_{key}'] for r in group])} | "
                         f"{spread([r[f'final_{key}'] for r in group])} | {spread([r['time_to_best_s'] for r in group])} | "
                         f"{to_target} | {spread([r['sent_mb'] for r in group])} | "
                         f"{spread([r['wall_s'] for r in group if r['wall_s']])} |")
        if target is not None:
            lines.append(f"| {w} | *target* | | local SGD's best {'-' if higher else '+'} {target_delta:g} = "
                         f"{target:.3f} | | | | | |")
    return lines


def scale_table(runs: list[dict], reference: list[dict], key: str, unit: str) -> list[str]:
    """ResIST evaluated with its residual branches scaled by c against unscaled, same workers and seed. The
    scale changes no training step here, so the training losses must agree: the table says whether they do."""
    lines = [f"| workers | seed | c | best {unit}, scaled by c | best, unscaled | final, scaled | "
             "final, unscaled | training losses identical | time (s), scaled run / unscaled run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        base = next((b for b in reference if b["algo"] == "resist" and (b["workers"], b["seed"]) == (r["workers"], r["seed"])), None)
        if base is None:
            continue
        same = [x.get("loss") for x in base["rows"]] == [x.get("loss") for x in r["rows"]]
        c = json.loads((Path(base["dir"]) / "summary.json").read_text())["eval_scale"]
        lines.append(f"| {r['workers']} | {r['seed']} | {c:g} | {base[f'best_{key}']:.3f} | {r[f'best_{key}']:.3f} | "
                     f"{base[f'final_{key}']:.3f} | {r[f'final_{key}']:.3f} | {'yes' if same else 'NO'} | "
                     f"{base['time_s']:.1f} / {r['time_s']:.1f} |")
    return lines


def copy_run(run_dir: Path, dest: Path) -> None:
    """The run folder without its checkpoints: what the tables were computed from."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in run_dir.iterdir():
        if f.is_file() and f.suffix != ".pt" and f.name != "command.pending":
            (dest / f.name).write_bytes(f.read_bytes())


def plot(runs: list[dict], out: Path) -> Path:
    """``resist plot`` of the runs, as a user would draw it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    labels = ",".join(f"{r['label'].replace(',', '')} S={r['workers']} seed {r['seed']}" for r in runs)  # --labels splits at commas
    subprocess.run([sys.executable, "-m", "resist.cli", "plot", *[r["dir"] for r in runs], "--out", str(out),
                    "--labels", labels], env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=SUITES, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"), help="CIFAR-10 (vit)")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--scale-seeds", type=int, nargs="*", default=None,
                    help="seeds of the unscaled-evaluation runs (default: --seeds for gpt, none for vit)")
    ap.add_argument("--runs", default="runs/transformers", help="folder for the run folders")
    ap.add_argument("--only-existing", action="store_true", help="tabulate the finished runs; train nothing")
    args = ap.parse_args()
    suite = SUITES[args.suite]
    lm = args.suite == "gpt"
    if not lm and not Path(args.data_dir).is_dir():
        raise SystemExit(f"transformers_table: data folder {args.data_dir} does not exist; pass --data-dir")
    runs_dir = Path(args.runs) / suite["name"]
    specs = specs_for(args.workers, args.seeds, args.scale_seeds if args.scale_seeds is not None
                      else args.seeds if lm else [])
    start = library_state()
    results = []
    for spec in specs:
        out = runs_dir / spec.name
        if args.only_existing:
            if not (out / "summary.json").is_file():
                continue
        else:
            out = run(spec, suite["preset"], args.data_dir, runs_dir, suite["flags"])
        results.append(collect(spec, out))
    if not args.only_existing:  # which library trained them, one line per invocation, for the tables written later
        with (runs_dir / "library.txt").open("a") as f:
            f.write(describe_library(start, library_state()) + "\n")
    if not results:
        raise SystemExit(f"transformers_table: no finished runs under {runs_dir}")
    tabulate(args, suite, lm, runs_dir, results, describe_library(start, library_state()))


def tabulate(args, suite: dict, lm: bool, runs_dir: Path, results: list[dict], library: str) -> None:
    name = suite["name"]
    commits = list(dict.fromkeys((runs_dir / "library.txt").read_text().splitlines())) \
        if (runs_dir / "library.txt").is_file() else []
    trained = ", ".join(commits) or "unknown"
    if len(commits) > 1:  # what differs between them under src/, so a reader can tell whether it matters
        changed = git("diff", "--name-only", commits[0].split()[0], commits[-1].split()[0], "--", "src").split()
        trained += f" (their src/ differs in {', '.join(changed) or 'nothing'})"
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
           "cores": os.cpu_count(), "trained_with_library": trained, "tabulated_with_library": library}
    main_runs = [r for r in results if r["suite"] == "main"]
    key, unit, higher, delta = ("bpb", "test bits/byte", False, 0.05) if lm else ("acc", "test acc (%)", True, 1.0)
    preset_cmd = f"resist train {suite['preset']} --algo ALGO --workers S --seed SEED --data-dir D --out DIR {' '.join(suite['flags'])}"
    seeds = sorted({r["seed"] for r in main_runs})
    lines = [f"# {suite['title']} (CPU scale)\n",
             f"Written by `python bench/transformers_table.py {' '.join(sys.argv[1:])}` on {env['date']}. "
             f"Every run is `{preset_cmd}` (the exact command of each is in "
             f"{name}.json and in its folder under {name}/, copied without checkpoints). Trained with library "
             f"{trained}; tabulated with {library}. {env['machine']} CPU ({env['cores']} cores, every run pinned "
             f"to one core that other jobs shared, so wall times are inflated), torch {env['torch']}, Python "
             f"{env['python']}, in-process runtime. Times are parallel-equivalent seconds (per round, the slowest "
             f"worker's compute plus the synchronization); mean ± standard deviation over seeds {seeds}. "
             "A CPU-scale measurement: far shorter and smaller than the issue's full-size setting, so the "
             "numbers compare the algorithms at this budget and say nothing about converged quality.\n",
             "## ResIST vs local SGD\n", *main_table(main_runs, key, unit, higher, delta), ""]
    noscale = [r for r in results if r["suite"] == "noscale"]
    twins = [(b["time_s"], r["time_s"]) for r in noscale for b in main_runs
             if b["algo"] == "resist" and (b["workers"], b["seed"]) == (r["workers"], r["seed"])]
    if twins:  # the same computation timed twice: how far the shared core moved a measured time
        worst = max(max(a, b) / min(a, b) for a, b in twins)
        # local SGD's rounds all do the same work (the last may be cut short): their spread is the machine's
        within = max(max(c) / min(c) for c in ([x["compute_s"] for x in r["rows"][:-1]] for r in main_runs
                                                if r["algo"] == "local_sgd") if c)
        lines += [f"**Timing noise.** The core these runs shared carried other jobs' load that came and went: "
                  f"the rounds of one local SGD run, all the same work, took up to {within:.2f}x one another's "
                  f"compute time, and the same training measured twice (ResIST and its unscaled twin below, "
                  f"identical losses) differs by up to {worst:.2f}x in parallel-equivalent time. Times compare "
                  "the algorithms only within that factor; bytes and scores are exact.\n"]
    if noscale:
        lines += ["## Activation scaling at evaluation\n",
                  "ResIST scales each partitioned block's residual branch by c when the whole model is evaluated "
                  "(`algo.scale_activations`, CLI `--scale` / `--no-scale`). Without a warm-up (`--warmup-epochs` 0, "
                  "the default) and with LayerNorm instead of BatchNorm, c enters nothing but that evaluation: "
                  "the `--no-scale` run below is the same training evaluated unscaled (a column checks the "
                  "training losses of every round).\n", *scale_table(noscale, main_runs, key, unit), ""]
    lines += ["## PROJECTION (not a measurement): whole runs on 1, 10 and 100 Gbit/s links\n",
              "`resist project`'s arithmetic: measured compute time plus each round's bytes over the link, 50 us "
              "per message; speed-up over local SGD with the same workers and seed.\n", *projection_table(main_runs), ""]
    OUT.mkdir(parents=True, exist_ok=True)
    for r in results:  # the tables' sources beside them; the figures are drawn from these copies
        dest = OUT / name / Path(r["dir"]).name
        copy_run(Path(r["dir"]), dest)
        r["dir"] = str(dest.relative_to(ROOT))
    for w in sorted({r["workers"] for r in results}):
        group = [r for r in results if r["workers"] == w and r["seed"] == seeds[0]]
        fig = plot(group, OUT / f"{name}_w{w}.png")
        lines.append(f"Seed {seeds[0]}, {w} workers (`resist plot {' '.join(r['dir'] for r in group)}`): "
                     f"![{fig.name}]({fig.name})\n")
    body = {"env": env, "preset": suite["preset"], "flags": suite["flags"],
            "runs": [{k: v for k, v in r.items() if k not in ("config", "rows")} for r in results]}
    (OUT / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
