"""Transformer results (issue 14), through the released CLI: ResIST vs local SGD for a byte-level GPT on
the Python standard library's sources (``--variant gpt``) and for ViT-tiny on CIFAR-10 (``--variant vit``),
at CPU scale.

Each variant is a preset plus fixed flags (below: what makes one run fit about 4 minutes on one shared
core). The tables go to docs/results/NAME.{md,json} with a ``resist plot`` figure per worker count, and
the run folders are copied beside them without checkpoints. ResIST is also run without activation
scaling (``--no-scale``; for ``--scale-seeds``, by default every seed for gpt and none for vit): with no
warm-up and no BatchNorm, the scale only enters evaluation of the whole model, so the two runs train
identically and the table checks that from their training losses. The published files came from:

    python experiments/run.py transformers --variant gpt --workers 2 4 --seeds 0 1
    python experiments/run.py transformers --variant vit --workers 2 4 --seeds 0 1 --scale-seeds 0 1 \\
        --data-dir ../shared/data/cifar10
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import common
from common import ROOT, Spec, copy_runs, git, main_table, projection_table, public, record, table
from suites.cifar10 import main_specs

VARIANTS = {
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
RUNS = lambda args: Path("runs/transformers") / VARIANTS[args.variant]["name"]  # noqa: E731


def add_arguments(ap) -> None:
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--scale-seeds", type=int, nargs="*", default=None,
                    help="seeds of the unscaled-evaluation runs (default: --seeds for gpt, none for vit)")


def specs(args) -> list[Spec]:
    """The comparison, then ResIST unscaled for ``--scale-seeds`` (last: the least telling runs)."""
    v = VARIANTS[args.variant]
    scale = args.scale_seeds if args.scale_seeds is not None else args.seeds if args.variant == "gpt" else []
    out = main_specs(v["preset"], args.workers, args.seeds, ALGOS) + [
        Spec(f"resist_noscale_w{w}_s{seed}", v["preset"], ["--algo", "resist", "--no-scale", "--workers", str(w),
             "--seed", str(seed)], "resist, no activation scaling", "noscale") for seed in scale for w in args.workers]
    for s in out:
        s.tail = v["flags"]
    return out


def scale_table(runs: list[dict], reference: list[dict], key: str, unit: str) -> list[str]:
    """ResIST evaluated with its residual branches scaled by c against unscaled, same workers and seed. The
    scale changes no training step here, so the training losses must agree: the table says whether they do."""
    rows = []
    for r in runs:
        base = next((b for b in reference if b["algo"] == "resist" and (b["workers"], b["seed"]) == (r["workers"], r["seed"])), None)
        if base is not None:
            same = [x.get("loss") for x in base["rows"]] == [x.get("loss") for x in r["rows"]]
            rows.append([r["workers"], r["seed"], f"{base['summary']['eval_scale']:g}", f"{base[f'best_{key}']:.3f}",
                         f"{r[f'best_{key}']:.3f}", f"{base[f'final_{key}']:.3f}", f"{r[f'final_{key}']:.3f}",
                         "yes" if same else "NO", f"{base['time_s']:.1f} / {r['time_s']:.1f}"])
    return table(["workers", "seed", "c", f"best {unit}, scaled by c", "best, unscaled", "final, scaled",
                  "final, unscaled", "training losses identical", "time (s), scaled run / unscaled run"], rows)


def trained_with(runs_dir: Path, results: list[dict]) -> str:
    """The libraries that trained the runs (RUNS/library.txt, else each run's), and what differs
    between the first and the last under src/, so a reader can tell whether it matters."""
    files = [runs_dir / "library.txt"] if (runs_dir / "library.txt").is_file() else \
        [Path(r["dir"]) / "library.txt" for r in results if (Path(r["dir"]) / "library.txt").is_file()]
    commits = list(dict.fromkeys(line for f in files for line in f.read_text().splitlines()))
    text = ", ".join(commits) or "unknown"
    if len(commits) > 1:
        changed = git("diff", "--name-only", commits[0].split()[0], commits[-1].split()[0], "--", "src").split()
        text += f" (their src/ differs in {', '.join(changed) or 'nothing'})"
    return text


def plot(runs: list[dict], out: Path) -> Path:
    """``resist plot`` of the runs, as a user would draw it."""
    labels = ",".join(f"{r['label'].replace(',', '')} S={r['workers']} seed {r['seed']}" for r in runs)  # --labels splits at commas
    subprocess.run([sys.executable, "-m", "resist.cli", "plot", *[r["dir"] for r in runs], "--out", str(out),
                    "--labels", labels], env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    return out


def tabulate(args, results: list[dict], env: dict) -> None:
    v = VARIANTS[args.variant]
    name, lm = v["name"], args.variant == "gpt"
    env |= {"trained_with_library": trained_with(args.runs, results)}
    main_runs = [r for r in results if r["suite"] == "main"]
    key, unit, delta = ("bpb", "test bits/byte", 0.05) if lm else ("acc", "test acc (%)", 1.0)
    seeds = sorted({r["seed"] for r in main_runs})
    lines = [f"# {v['title']} (CPU scale)\n",
             f"Every run is `resist train {v['preset']} --algo ALGO --workers S --seed SEED --data-dir D --out DIR "
             f"{' '.join(v['flags'])}` (the exact command of each is in {name}.json and in its folder under "
             f"{name}/, copied without checkpoints). Trained with library {env['trained_with_library']}; "
             "tabulated with the library above. Every run pinned to one core that other jobs shared, so wall "
             "times are inflated; in-process runtime. Times are parallel-equivalent seconds (per round, the "
             f"slowest worker's compute plus the synchronization); mean ± standard deviation over seeds {seeds}. "
             "A CPU-scale measurement: far shorter and smaller than the issue's full-size setting, so the "
             "numbers compare the algorithms at this budget and say nothing about converged quality.\n",
             "## ResIST vs local SGD\n", *main_table(main_runs, ALGOS, final=True, delta=delta), ""]
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
    copy_runs(results, common.RESULTS / name)  # the tables' sources beside them; the figures are drawn from these
    if (args.runs / "library.txt").is_file():
        (common.RESULTS / name / "library.txt").write_text((args.runs / "library.txt").read_text())
    for w in sorted({r["workers"] for r in results}):
        group = [r for r in results if r["workers"] == w and r["seed"] == seeds[0]]
        fig = plot(group, common.RESULTS / f"{name}_w{w}.png")
        lines.append(f"Seed {seeds[0]}, {w} workers (`resist plot {' '.join(r['dir'] for r in group)}`): "
                     f"![{fig.name}]({fig.name})\n")
    record(name, {"preset": v["preset"], "flags": v["flags"], "runs": [public(r) for r in results]}, lines,
           args.command, env)
