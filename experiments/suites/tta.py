"""Time-to-accuracy suite (issue 20): the long CIFAR-10 runs behind the gap study, and their tables.

Every run is evaluated on the whole test set every round (``--eval-every 1``), which at 4 workers and 25
local steps is 4 evaluations an epoch. The runs are meant to be made in the background on one core from
a frozen worktree of main, so that every run of a group is trained by one library (each run folder's
``library.txt``):

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/run.py tta --data-dir ../shared/data/cifar10 \\
        --runs /work/long_runs/tta --only base_lsgd_w4_s0 base_resist_w4_s0

Groups (``--list`` prints every run): ``base`` (ResIST and local SGD, 8 epochs), ``var`` (part 3's
variants of ResIST at 4 workers, 1/8 width, 8 epochs), ``len`` / ``wide`` / ``w8`` / ``tm`` (part 2: 16
epochs, 1/4 width, 8 workers, time-matched local SGD), ``gpu`` (part 6's twin on one GPU).

The tables (``--only-existing`` to write them without training): each finished run is copied without
checkpoints or weights into docs/results/tta/, then docs/results/tta.{md,json} and tta_gap.png are
written from that folder:

* variants (part 3): every ResIST variant at 4 workers, 1/8 width, 8 epochs against local SGD of the same
  seed: best and final accuracy, final gap, and at equal accuracy (the lower of the two bests; and local
  SGD's final less 0.5 point, where reached) the time, deterministic-cost and bytes ratios;
* the gap over training (part 2): ResIST's accuracy minus local SGD's at each evaluation, per setting
  (mean over the seeds that have both), beside the paper's gap;
* where the bytes go (part 3's bytes criterion): per recipe run, the bytes of a whole (warm-up) round and of
  a partitioned round against a local-SGD round, and the rounds each took to the target.

    python experiments/run.py tta --only-existing --runs /work/long_runs/tta
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import common
from common import Spec, copy_runs, gap, ratios, reach, read_run, record, spread, table
from resist.analysis.projection import cumulative_sent
from resist.analysis.target import TOLERANCE, load_step_costs, time_to
from resist.presets import preset

PRESET = "cifar10_cpu_long"
GPU_PRESET = "cifar10_gpu_short"  # full width, 14 epochs, on one GPU (experiments/gpu_session.sh tta)
RUNS = "runs/tta"
# (label, local SGD prefix, ResIST prefix, paper's gap) of the gap figure
GAP_SETTINGS = [
    ("1/8 width, 8 epochs, 4 workers", "base_lsgd_w4", "base_resist_w4", -0.55),
    ("1/8 width, 16 epochs, 4 workers", "len16_lsgd_w4", "len16_resist_w4", -0.55),
    ("1/4 width, 8 epochs, 4 workers", "wide4_lsgd_w4", "wide4_resist_w4", -0.55),
    ("1/8 width, 8 epochs, 8 workers", "w8_lsgd_w8", "w8_resist_w8", -0.55),
    ("1/8 width, 8 epochs, 8 workers, min depth 4", "w8_lsgd_w8", "w8_resistmd4_w8", -0.55),
    ("1/8 width, 8 epochs, 4 workers, 10% cool-down", "base_lsgd_w4", "var_cool10_w4", -0.55),
    ("1/8 width, 8 epochs, 4 workers, outer step (lr 1.0, momentum 0.5)", "base_lsgd_w4", "var_outer10m05_w4", -0.55),
]


#: Part 3's best recipe: the preset the GPU twin repeats at full width.
RECIPE = "cifar10_cpu_fast_lean"


def recipe(epochs: float) -> list[str]:
    """Part 3's best recipe (``RECIPE``'s outer step; its warm-up and cool-down, if any, the same share
    of the epochs) as flags for a run of ``epochs`` (the GPU twin repeats it at full width)."""
    best = preset(RECIPE)
    a, share = best.algo, epochs / best.optim.epochs
    return ["--outer-lr", f"{a.outer_lr:g}", "--outer-momentum", f"{a.outer_momentum:g}",
            *([] if a.outer_blocks else ["--no-outer-blocks"]),
            *(["--warmup-epochs", f"{a.warmup_epochs * share:g}"] if a.warmup_epochs else []),
            *(["--cooldown-epochs", f"{a.cooldown_epochs * share:g}"] if a.cooldown_epochs else [])]


def _spec(name: str, workers: int, seed: int, algo: str, *flags: str) -> Spec:
    return Spec(name, GPU_PRESET if name.startswith("gpu_") else PRESET,
                ["--algo", algo, "--workers", str(workers), "--seed", str(seed), *flags], name, name.split("_")[0],
                tail=["--eval-every", "1"])


#: The seeds the tables look for (a setting counts those with both runs finished).
SEEDS = (0, 1, 2)


def specs(args=None) -> list[Spec]:
    """Every run of the suite, in the order a cut-short suite should have them."""
    out: list[Spec] = []
    for seed in (0, 1):
        out += [_spec(f"base_lsgd_w4_s{seed}", 4, seed, "local_sgd"),
                _spec(f"base_resist_w4_s{seed}", 4, seed, "resist")]
    # Local SGD carrying its momentum too: the fair baseline of ResIST's carried-momentum variant.
    out += [_spec(f"base_lsgdcm_w4_s{seed}", 4, seed, "local_sgd", "--carry-momentum") for seed in (0, 1)]
    # Local SGD with the outer optimizer (DiLoCo) that ResIST's best variant uses: the fair baseline of
    # var_outer10m05 (the outer step may help local SGD as much).
    out += [_spec(f"base_lsgdo10m05_w4_s{seed}", 4, seed, "local_sgd", "--outer-lr", "1.0", "--outer-momentum", "0.5")
            for seed in (0, 1)]
    variants = {
        "carrymom": ["--carry-momentum"],
        "warm1": ["--warmup-epochs", "1"],
        "warm05": ["--warmup-epochs", "0.5"],
        "iters10": ["--local-iters", "10"],
        "iters50": ["--local-iters", "50"],
        "outer07m09": ["--outer-lr", "0.7", "--outer-momentum", "0.9"],
        "outer10m05": ["--outer-lr", "1.0", "--outer-momentum", "0.5"],
        # The outer step met the goal on seed 0 only (seed 1 ends 1.5 points short): more momentum, and
        # the outer step with the cool-down, each run on seed 1 first (where the goal failed).
        "outer10m07": ["--outer-lr", "1.0", "--outer-momentum", "0.7"],
        "outer10m05cool10": ["--outer-lr", "1.0", "--outer-momentum", "0.5", "--cooldown-epochs", "0.8"],
        # The outer step with the two single changes that came closest on seed 1 (cool50 62.40%, warm1
        # 62.61%, against the outer step's 62.47% and a target of 63.46%): seed 1 first.
        "outer10m05cool50": ["--outer-lr", "1.0", "--outer-momentum", "0.5", "--cooldown-epochs", "4"],
        "outer10m05warm1": ["--outer-lr", "1.0", "--outer-momentum", "0.5", "--warmup-epochs", "1"],
        # With the 1-epoch warm-up the bytes ratio (1.61x) misses the goal's 2x: the warm-up's whole-model
        # rounds are most of the bytes. Half of it.
        "outer10m05warm05": ["--outer-lr", "1.0", "--outer-momentum", "0.5", "--warmup-epochs", "0.5"],
        # With whole rounds at local SGD's bytes, the 1-epoch warm-up still sends 1.92-1.98x fewer bytes: a
        # partitioned round with the outer step sends its blocks' outer momentum too (2.10 MB against plain
        # ResIST's 1.79). The outer step on the shared layers only: no momentum travels.
        "outer10m05warm1sh": ["--outer-lr", "1.0", "--outer-momentum", "0.5", "--warmup-epochs", "1",
                              "--no-outer-blocks"],
        "recalib": ["--bn-eval", "recalibrate"],
        "cool05": ["--cooldown-epochs", "0.4"],
        "cool10": ["--cooldown-epochs", "0.8"],
        "cool20": ["--cooldown-epochs", "1.6"],
        # The gap opens after the first learning-rate decay (epoch 4): cool-downs that cover it.
        "cool30": ["--cooldown-epochs", "2.4"],
        "cool50": ["--cooldown-epochs", "4"],
    }
    for seed in (0, 1):
        out += [_spec(f"var_{k}_w4_s{seed}", 4, seed, "resist", *v) for k, v in variants.items()]
    for seed in (0, 1):
        out += [_spec(f"len16_lsgd_w4_s{seed}", 4, seed, "local_sgd", "--epochs", "16"),
                _spec(f"len16_resist_w4_s{seed}", 4, seed, "resist", "--epochs", "16")]
    # Seed 1 too: seed 0's gap at 1/4 width (-3.80) differs from 1/8 width's (-1.09 on that seed).
    out += [_spec(f"wide4_{name}_w4_s{seed}", 4, seed, algo, "--width", "0.25")
            for seed in (0, 1) for name, algo in (("lsgd", "local_sgd"), ("resist", "resist"))]
    # 8 workers: 49 steps an epoch per worker, so 2 rounds an epoch at 25 local steps.
    out += [_spec("w8_lsgd_w8_s0", 8, 0, "local_sgd"),
            _spec("w8_resist_w8_s0", 8, 0, "resist"),
            _spec("w8_resistmd4_w8_s0", 8, 0, "resist", "--min-depth", "4"),
            _spec("w8_ensemble_w8_s0", 8, 0, "ensemble")]
    # Local SGD for the epochs that cost what ResIST's 8 epochs cost (ResIST's step at 4 workers is
    # about 0.55x local SGD's on this machine: docs/results/step_breakdown.md).
    out += [_spec(f"tm_lsgd_w4_s{seed}", 4, seed, "local_sgd", "--epochs", "4.4") for seed in (0, 1)]
    # The goal met on seed 0 and missed on seed 1, and the seeds spread more than the effect asked
    # about: a third seed of the preset's recipe and of its baselines.
    out += [_spec("base_lsgd_w4_s2", 4, 2, "local_sgd"), _spec("var_outer10m05_w4_s2", 4, 2, "resist", *variants["outer10m05"]),
            _spec("base_resist_w4_s2", 4, 2, "resist")]
    # The outer step with a 1-epoch local-SGD warm-up ended 2.33 points above local SGD on seed 1, the
    # seed where the outer step alone missed: its seed 0 and 2.
    out += [_spec("var_outer10m05warm1_w4_s2", 4, 2, "resist", *variants["outer10m05warm1"])]
    # The half-epoch warm-up's bytes sit at the goal's 2x once whole rounds stop sending the outer momentum
    # (every rank has the same): its third seed.
    out += [_spec("var_outer10m05warm05_w4_s2", 4, 2, "resist", *variants["outer10m05warm05"])]
    # The outer step on the shared layers only reached local SGD's final - 0.5 by round 17 on seeds 0 and 1,
    # under half local SGD's bytes: its third seed.
    out += [_spec("var_outer10m05warm1sh_w4_s2", 4, 2, "resist", *variants["outer10m05warm1sh"])]
    # The recipe against the baseline with the same outer step (DiLoCo: local SGD stepping the averages the
    # same way), which has 2 seeds; and at 8 workers, against seed 0's local SGD there.
    out += [_spec("base_lsgdo10m05_w4_s2", 4, 2, "local_sgd", *variants["outer10m05"]),
            _spec("w8_lean_w8_s0", 8, 0, "resist", *variants["outer10m05warm1sh"])]
    # The recipe ended 6.01 points above local SGD at 8 workers on seed 0: a second seed of the pair.
    out += [_spec("w8_lsgd_w8_s1", 8, 1, "local_sgd"),
            _spec("w8_lean_w8_s1", 8, 1, "resist", *variants["outer10m05warm1sh"])]
    # The GPU twin (part 6): full width, cifar10_gpu_short, most telling first: a second seed of the pair
    # measured on the H200, the recipe, and local SGD for the epochs that cost what ResIST's 14 cost
    # there (0.59x: docs/results/cifar10_gpu_w4_tables.md). 25 local steps give 4 evaluations an epoch.
    gpu = ["--local-iters", "25", "--device", "auto"]
    out += [_spec("gpu_resist_w4_s1", 4, 1, "resist", *gpu), _spec("gpu_lsgd_w4_s1", 4, 1, "local_sgd", *gpu),
            _spec("gpu_recipe_w4_s0", 4, 0, "resist", *gpu, *recipe(14)),
            _spec("gpu_tmlsgd_w4_s0", 4, 0, "local_sgd", *gpu, "--epochs", "8.3"),
            _spec("gpu_resist_w4_s0", 4, 0, "resist", *gpu), _spec("gpu_lsgd_w4_s0", 4, 0, "local_sgd", *gpu)]
    return out


def compare(lsgd_dir: Path, resist_dir: Path, costs) -> dict:
    lsgd, resist = read_run(lsgd_dir, need_eval=True), read_run(resist_dir, need_eval=True)
    key = lsgd.headline.key
    out = {"resist_best": resist.best(), "resist_final": resist.evaluated[-1][key], "lsgd_best": lsgd.best(),
           "lsgd_final": lsgd.evaluated[-1][key]}
    out["final_gap"] = out["resist_final"] - out["lsgd_final"]
    for name, target in (("common", min(lsgd.best(), resist.best())), ("match", out["lsgd_final"] - TOLERANCE["classification"])):
        out |= {f"{name}_target": target, f"{name}_reached": reach(resist, target) is not None}
        out |= {f"{name}_{k}": v for k, v in (ratios(lsgd, resist, target, costs) or {}).items()}
    return out


#: A variant whose local-SGD counterpart changes the same thing is also compared with that baseline.
SAME_CHANGE = {"var_carrymom": "base_lsgdcm", "var_outer10m05": "base_lsgdo10m05",
               "var_outer10m05warm1": "base_lsgdo10m05", "var_outer10m05warm1sh": "base_lsgdo10m05"}


def variants_table(dest: Path, names: list[str], costs) -> tuple[list[str], list[dict]]:
    rows, raw = [], []
    labels = ["base_resist"] + sorted({n.rsplit("_w", 1)[0] for n in names if n.startswith("var_")})
    for label, base in [(v, "base_lsgd") for v in labels] + list(SAME_CHANGE.items()):
        pairs = [(dest / f"{base}_w4_s{s}", dest / f"{label}_w4_s{s}") for s in SEEDS]
        label = label if base == "base_lsgd" else f"{label} vs {base}"
        got = [compare(lsgd, r, costs) | {"seed": s} for s, (lsgd, r) in enumerate(pairs)
               if (lsgd / "summary.json").is_file() and (r / "summary.json").is_file()]
        if got:
            raw.append({"variant": label, "seeds": got})
            col = lambda k, fmt="{:.2f}x": spread([g.get(k) for g in got], fmt)  # noqa: E731
            rows.append([label, len(got), col("resist_best", "{:.2f}"), col("final_gap", "{:+.2f}"), col("common_time"),
                         col("common_cost"), col("common_bytes"), f"{sum(g['match_reached'] for g in got)}/{len(got)}",
                         col("match_time"), col("match_cost"), col("match_bytes")])
    return table(["variant", "seeds", "ResIST best (%)", "final gap (points)", "time ratio, equal acc.",
                  "cost ratio, equal acc.", "bytes ratio, equal acc.", "reaches LSGD final - 0.5",
                  "time ratio there", "cost ratio there", "bytes ratio there"], rows), raw


def gap_curves(dest: Path) -> list[tuple[str, list[tuple[float, float]], float, int]]:
    curves = []
    for label, lsgd, resist, paper in GAP_SETTINGS:
        per_seed = [gap(read_run(dest / f"{lsgd}_s{s}", need_eval=True), read_run(dest / f"{resist}_s{s}", need_eval=True))
                    for s in SEEDS if (dest / f"{lsgd}_s{s}" / "summary.json").is_file()
                    and (dest / f"{resist}_s{s}" / "summary.json").is_file()]
        if per_seed:
            epochs = sorted(set.intersection(*(set(p) for p in per_seed)))
            curves.append((label, [(e, statistics.fmean(p[e] for p in per_seed)) for e in epochs], paper, len(per_seed)))
    return curves


def gap_figure(curves, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, points, _, seeds in curves:
        ax.plot([e for e, _ in points], [g for _, g in points], marker="o", markersize=3,
                label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
    for p in sorted({p for _, _, p, _ in curves}):
        ax.axhline(p, color="0.3", linestyle="--", linewidth=1)
        ax.annotate(f"paper's gap {p:+.2f} (160 paper epochs)", (0.01, p), xycoords=("axes fraction", "data"),
                    fontsize="x-small", va="bottom")
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set(xlabel="epoch (shard epochs: S workers pass over the data once)",
           ylabel="ResIST - local SGD, test accuracy (points)", title="The gap over training (CIFAR-10)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small")
    fig.savefig(out, dpi=120)
    return out


def tabulate(args, results: list[dict], env: dict) -> None:

    dest = common.RESULTS / "tta"
    copy_runs(results, dest)
    names = sorted(p.name for p in dest.iterdir() if (p / "summary.json").is_file())
    costs = load_step_costs(common.OUT / "step_breakdown.json")
    variants, raw = variants_table(dest, names, costs)
    curves = gap_curves(dest)
    fig = gap_figure(curves, common.RESULTS / "tta_gap.png") if curves else None
    libraries = sorted({(dest / n / "library.txt").read_text().strip()[:10] for n in names
                        if (dest / n / "library.txt").is_file()})
    lines = ["# Time to accuracy: the gap study (issue 20)\n",
             f"Runs by `experiments/run.py tta` (before: `bench/tta_suite.py`) with librar{'ies' if len(libraries) > 1 else 'y'} "
             f"{', '.join(libraries)} (each run folder's library.txt), in-process, one core (`OMP_NUM_THREADS=1 "
             "taskset -c 0`) of this project's 2-core x86_64 VM while the other core ran tests and other work; real "
             "CIFAR-10, paper ResNet101 at 1/8 width, 25 local steps, batch 128 per worker, lr 0.05 decayed at 50% and "
             "75%, whole test set every round (4 evaluations an epoch at 4 workers). Run folders (no weights): "
             "[tta/](tta/); step costs from step_breakdown.json. Ratios are local SGD's figure / ResIST's "
             "(>1: ResIST got there sooner or with fewer bytes); equal acc. = the lower of the two runs' "
             "best; 'there' = at local SGD's final accuracy less 0.5 point, for the seeds that reached it.\n",
             "## ResIST variants at 4 workers, 8 epochs (part 3)\n", *variants, ""]
    if fig:
        lines += ["## The gap over training (part 2)\n", f"![gap over training]({fig.name})\n"]
        lines += [f"- {label}, {seeds} seed(s): final gap {points[-1][1]:+.2f} (paper {paper:+.2f}); mean over the "
                  f"last quarter {statistics.fmean(g for e, g in points if e >= 0.75 * points[-1][0]):+.2f}"
                  for label, points, paper, seeds in curves]
    matched, tm_raw = time_matched(dest)
    lines += matched
    eight, w8_raw = workers8(dest, costs)
    lines += eight
    spent, bytes_raw = where_bytes_go(dest)
    lines += spent
    record("tta", {"variants": raw, "gap": [{"setting": c[0], "points": c[1], "paper": c[2], "seeds": c[3]}
                                            for c in curves], "time_matched": tm_raw, "workers8": w8_raw,
                   "bytes": bytes_raw, "runs": names}, lines, args.command, env)


def shared_and_blocks(run_dir: Path) -> tuple[int, int]:
    """Bytes of the float32 state (parameters and BatchNorm statistics) of the layers every sub-network of
    ``run_dir``'s model shares, and of its partitioned blocks."""
    from resist.models import create_model

    cfg, summary = (json.loads((run_dir / f).read_text()) for f in ("config.json", "summary.json"))
    model = create_model(cfg["model"]["name"], num_classes=10, width=cfg["model"]["width"])
    size = lambda m: sum(t.numel() * 4 for t in [*m.parameters(), *m.buffers()] if t.is_floating_point())  # noqa: E731
    blocks = sum(size(model.blocks[b]) for b in summary["scaled_blocks"])
    return size(model) - blocks, blocks


#: The runs whose bytes the goal's bytes criterion turns on (plain ResIST, the outer step, with warm-ups, on
#: the shared layers only).
BYTES_VARIANTS = ("base_resist", "var_outer10m05", "var_outer10m05warm05", "var_outer10m05warm1",
                  "var_outer10m05warm1sh")


def per_round(rows: list[dict]) -> list[int]:
    """Bytes sent in each round by the worker that sent the most (differences of ``cumulative_sent``)."""
    total = cumulative_sent(rows)
    return [b - a for a, b in zip([0, *total], total)]


def where_bytes_go(dest: Path) -> tuple[list[str], list[dict]]:
    """Part 3's bytes criterion taken apart: per variant and seed, the bytes a worker sends in a whole
    round (warm-up: every block, all-reduced) and in a partitioned round, against a local-SGD round, and
    the rounds each run took to local SGD's final - 0.5. The bytes ratio there is local SGD's rounds x its
    round over ResIST's whole and partitioned rounds, so it says which of the two would have to change."""
    raw = []
    for label in BYTES_VARIANTS:
        for s in SEEDS:
            lsgd_dir, run_dir = dest / f"base_lsgd_w4_s{s}", dest / f"{label}_w4_s{s}"
            if not ((lsgd_dir / "summary.json").is_file() and (run_dir / "summary.json").is_file()):
                continue
            lsgd, run = read_run(lsgd_dir, need_eval=True), read_run(run_dir, need_eval=True)
            candidates = len(json.loads((run_dir / "summary.json").read_text())["scaled_blocks"])
            target = lsgd.evaluated[-1]["test_acc"] - TOLERANCE["classification"]
            l_at, r_at = time_to(lsgd, target), time_to(run, target)
            sent = per_round(run.rows)
            # (runs older than the blocks_per_worker column had no warm-up: every round partitioned)
            is_whole = [min(r.get("blocks_per_worker", [0])) == candidates for r in run.rows]
            whole = [b for w, b in zip(is_whole, sent) if w]
            parts = [b for w, b in zip(is_whole, sent) if not w]
            raw.append({"variant": label, "seed": s, "library": (run_dir / "library.txt").read_text().strip()[:10],
                        "lsgd_round_bytes": statistics.fmean(per_round(lsgd.rows)),
                        "whole_round_bytes": statistics.fmean(whole) if whole else None, "whole_rounds": len(whole),
                        "part_round_bytes": statistics.fmean(parts[:-1] or parts),
                        "lsgd_rounds_to_target": None if l_at is None else l_at.round + 1,
                        "rounds_to_target": None if r_at is None else r_at.round + 1,
                        "bytes_ratio_there": l_at.sent_bytes / r_at.sent_bytes if l_at and r_at else None})
    if not raw:
        return [], raw
    shared, blocks = shared_and_blocks(dest / f"{raw[0]['variant']}_w4_s{raw[0]['seed']}")
    mb = lambda v: "-" if v is None else f"{v / 1e6:.2f}"  # noqa: E731
    rows = [[r["variant"], r["seed"], r["library"], mb(r["lsgd_round_bytes"]), mb(r["whole_round_bytes"]),
             r["whole_rounds"], mb(r["part_round_bytes"]), f"{r['part_round_bytes'] / r['lsgd_round_bytes']:.2f}",
             "-" if r["rounds_to_target"] is None else f"{r['lsgd_rounds_to_target']} / {r['rounds_to_target']}",
             "-" if r["bytes_ratio_there"] is None else f"{r['bytes_ratio_there']:.2f}x"] for r in raw]
    return ["", "## Where the bytes go (part 3's bytes criterion)\n",
            "Bytes a worker sends per round (the worker that sent the most; MB = 10^6 bytes), from each run's "
            "metrics.jsonl: a local-SGD round, a whole round of ResIST (its warm-up: every block, all-reduced) and a "
            "partitioned round (the last round, which only averages, left out); rounds to local SGD's final - 0.5 "
            "(local SGD's / ResIST's, counting from 1) and the bytes ratio there. Before library 65d1ad2 a whole "
            "round with the outer step also all-reduced the outer momentum, the same on every rank (1.62x a "
            "local-SGD round); the library column says which code sent the bytes. Of a partitioned round, the layers "
            f"every sub-network shares cost {1.5 * shared / 1e6:.2f} MB (their {shared / 4e6:.2f} M float32 parameters and "
            f"statistics, all-reduced: 2 (S-1)/S = 1.5 times them per worker at 4 workers, as every local-SGD round "
            f"sends the whole model's); the partitioned blocks are {blocks / 4e6:.2f} M values, of which a worker sends "
            "the quarter it trained when it changes holder (3 rounds in 4), and with the outer step their outer "
            "momentum beside them.\n",
            *table(["variant", "seed", "library", "local SGD round (MB)", "whole round (MB)", "whole rounds",
                    "partitioned round (MB)", "partitioned / local SGD round", "rounds to target",
                    "bytes ratio there"], rows)], raw


#: Part 2's 8-worker runs beside local SGD's (seed 0): (run, what it is).
W8 = [("w8_resist_w8_s0", "ResIST"), ("w8_resistmd4_w8_s0", "ResIST, minimum depth 4"),
      ("w8_ensemble_w8_s0", "shallow ensemble (no communication)"),
      ("w8_lean_w8_s0", "ResIST, part 3's recipe (cifar10_cpu_fast_lean)")]


def workers8(dest: Path, costs) -> tuple[list[str], list[dict]]:
    """Part 2's 8 workers: each method's final and best score against local SGD's, with the equal-accuracy
    ratios (the ensemble sends nothing, so it has no byte ratio)."""
    base = dest / "w8_lsgd_w8_s0"
    runs = [(n, label) for n, label in W8 if (dest / n / "summary.json").is_file()]
    if not (base / "summary.json").is_file() or not runs:
        return [], []
    lsgd = read_run(base, need_eval=True)
    final = lsgd.evaluated[-1][lsgd.headline.key]
    raw, rows = [], [["local SGD", f"{final:.2f}", f"{lsgd.best():.2f}", "-", "-", "-", "-", "-"]]
    for name, label in runs:
        got = compare(base, dest / name, costs)
        raw.append({"run": name, **got})
        x = lambda k: "-" if got.get(k) is None else f"{got[k]:.2f}x"  # noqa: E731  (None: not measured)
        there = f"yes: {x('match_time')} / {x('match_cost')} / {x('match_bytes')}" if got["match_reached"] else "no"
        rows.append([label, f"{got['resist_final']:.2f}", f"{got['resist_best']:.2f}", f"{got['final_gap']:+.2f}",
                     x("common_time"), x("common_cost"), x("common_bytes"), there])
    return ["", "## 8 workers (part 2, seed 0)\n",
            "The same setting at 8 workers (49 steps an epoch per worker, so 2 rounds and 2 evaluations an epoch); "
            "ratios against local SGD at 8 workers as above. One seed: a hint.\n",
            *table(["method", "final (%)", "best (%)", "final - local SGD (points)", "time ratio, equal acc.",
                    "cost ratio, equal acc.", "bytes ratio, equal acc.",
                    "reaches LSGD final - 0.5 (time / cost / bytes ratio there)"], rows)], raw


def time_matched(dest: Path) -> tuple[list[str], list[dict]]:
    """Part 2's time-matched local SGD: local SGD for the epochs that cost what ResIST's 8 cost, per seed,
    beside ResIST (plain, and the variants compared with plain local SGD) at 8 epochs."""
    raw = []
    for s in SEEDS:
        tm = dest / f"tm_lsgd_w4_s{s}"
        if not (tm / "summary.json").is_file():
            continue
        lsgd = read_run(tm, need_eval=True)
        row = {"seed": s, "epochs": lsgd.rows[-1]["epoch"], "lsgd_final": lsgd.evaluated[-1]["test_acc"],
               "lsgd_time_s": lsgd.rows[-1]["time_s"], "resist": {}}
        for name in ("base_resist", "var_outer10m05", "var_cool10", "var_carrymom"):
            if (dest / f"{name}_w4_s{s}" / "summary.json").is_file():
                r = read_run(dest / f"{name}_w4_s{s}", need_eval=True)
                row["resist"][name] = {"final": r.evaluated[-1]["test_acc"], "time_s": r.rows[-1]["time_s"]}
        raw.append(row)
    if not raw:
        return [], raw
    rows = [[r["seed"], f"{r['epochs']:.1f}", f"{r['lsgd_final']:.2f}", f"{r['lsgd_time_s']:.0f}", name,
             f"{v['final']:.2f}", f"{v['time_s']:.0f}", f"{v['final'] - r['lsgd_final']:+.2f}"]
            for r in raw for name, v in r["resist"].items()]
    return ["", "## Time-matched local SGD (part 2)\n",
            "Local SGD trained for 4.4 epochs, what ResIST's 8 cost on this machine (ResIST's step is about 0.55x "
            "local SGD's, step_breakdown.md), its learning-rate decays at 50% and 75% of those epochs; against "
            "ResIST's runs of 8 epochs on the same seed. Times are the runs' own (parallel-equivalent, on a shared "
            "core: indicative).\n",
            *table(["seed", "local SGD epochs", "local SGD final (%)", "local SGD time (s)", "ResIST run",
                    "ResIST final (%)", "ResIST time (s)", "ResIST - local SGD (points)"], rows)], raw

