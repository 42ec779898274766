"""Tables and the gap figure of the time-to-accuracy suite (issue 20), from its run folders.

Copies each finished run of ``bench/tta_suite.py`` (without checkpoints or weights) into
docs/results/tta/, then writes docs/results/tta.{md,json} and tta_gap.png:

* variants (part 3): every ResIST variant at 4 workers, 1/8 width, 8 epochs against local SGD of the same
  seed: best and final accuracy, final gap, and at equal accuracy (the lower of the two bests; and local
  SGD's final less 0.5 point, where reached) the time, deterministic-cost and bytes ratios;
* the gap over training (part 2): ResIST's accuracy minus local SGD's at each evaluation, per setting
  (mean over the seeds that have both), beside the paper's gap.

    python bench/tta_table.py --runs /work/long_runs/tta
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from benchutil import OUT, git

from resist.analysis.plot import read_run
from resist.analysis.target import TOLERANCE, cost_for, load_step_costs, time_to

KEEP = ("command.txt", "config.json", "metrics.jsonl", "summary.json", "wall_s.txt", "library.txt")
DEST = OUT / "tta"

# (label, local SGD prefix, ResIST prefix, paper's gap) of the gap figure
GAP_SETTINGS = [
    ("1/8 width, 8 epochs, 4 workers", "base_lsgd_w4", "base_resist_w4", -0.55),
    ("1/8 width, 16 epochs, 4 workers", "len16_lsgd_w4", "len16_resist_w4", -0.55),
    ("1/4 width, 8 epochs, 4 workers", "wide4_lsgd_w4", "wide4_resist_w4", -0.55),
    ("1/8 width, 8 epochs, 8 workers", "w8_lsgd_w8", "w8_resist_w8", -0.55),
    ("1/8 width, 8 epochs, 8 workers, min depth 4", "w8_lsgd_w8", "w8_resistmd4_w8", -0.55),
    ("1/8 width, 8 epochs, 4 workers, 10% cool-down", "base_lsgd_w4", "var_cool10_w4", -0.55),
]


def copy_finished(runs: Path) -> list[str]:
    """Copy the finished runs' small files into docs/results/tta/NAME (replacing an older copy)."""
    names = []
    for run in sorted(p for p in runs.iterdir() if (p / "summary.json").is_file() and (p / "command.txt").is_file()):
        dest = DEST / run.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in KEEP:
            if (run / name).is_file():
                shutil.copy2(run / name, dest / name)
        names.append(run.name)
    return names


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.replace('+', '').format(statistics.stdev(values))}"


def compare(lsgd_dir: Path, resist_dir: Path, costs) -> dict:
    lsgd, resist = read_run(lsgd_dir, need_eval=True), read_run(resist_dir, need_eval=True)
    key = lsgd.headline.key
    lc, rc = cost_for(lsgd, costs), cost_for(resist, costs)
    out = {"resist_best": resist.best(), "resist_final": resist.evaluated[-1][key], "lsgd_best": lsgd.best(),
           "lsgd_final": lsgd.evaluated[-1][key]}
    out["final_gap"] = out["resist_final"] - out["lsgd_final"]
    for name, target in (("common", min(lsgd.best(), resist.best())),
                         ("match", out["lsgd_final"] - TOLERANCE["classification"])):
        lt, rt = time_to(lsgd, target, lc), time_to(resist, target, rc)
        out[f"{name}_target"] = target
        out[f"{name}_reached"] = rt is not None
        if lt and rt:
            out[f"{name}_time"] = lt.time_s / rt.time_s
            out[f"{name}_cost"] = lt.cost_s / rt.cost_s if lt.cost_s and rt.cost_s else None
            out[f"{name}_bytes"] = lt.sent_bytes / rt.sent_bytes
    return out


def variants_table(names: list[str], costs) -> tuple[list[str], list[dict]]:
    rows, raw = [], []
    labels = ["base_resist"] + sorted({n.rsplit("_w", 1)[0] for n in names if n.startswith("var_")})
    head = ["variant", "seeds", "ResIST best (%)", "final gap (points)", "time ratio, equal acc.",
            "cost ratio, equal acc.", "bytes ratio, equal acc.", "reaches LSGD final - 0.5",
            "time ratio there", "cost ratio there", "bytes ratio there"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        pairs = [(DEST / f"base_lsgd_w4_s{s}", DEST / f"{label}_w4_s{s}") for s in (0, 1)]
        got = [compare(lsgd, r, costs) | {"seed": s} for s, (lsgd, r) in enumerate(pairs)
               if (lsgd / "summary.json").is_file() and (r / "summary.json").is_file()]
        if not got:
            continue
        raw.append({"variant": label, "seeds": got})
        col = lambda k: [g.get(k) for g in got]  # noqa: E731
        lines.append("| " + " | ".join([
            label, str(len(got)), spread(col("resist_best")), spread(col("final_gap"), "{:+.2f}"),
            spread(col("common_time"), "{:.2f}x"), spread(col("common_cost"), "{:.2f}x"),
            spread(col("common_bytes"), "{:.2f}x"), f"{sum(col('match_reached'))}/{len(got)}",
            spread(col("match_time"), "{:.2f}x"), spread(col("match_cost"), "{:.2f}x"),
            spread(col("match_bytes"), "{:.2f}x")]) + " |")
    return lines, raw


def gap_curves() -> list[tuple[str, list[tuple[float, float]], float, int]]:
    curves = []
    for label, lsgd, resist, paper in GAP_SETTINGS:
        per_seed = []
        for s in (0, 1):
            a, b = DEST / f"{lsgd}_s{s}", DEST / f"{resist}_s{s}"
            if not ((a / "summary.json").is_file() and (b / "summary.json").is_file()):
                continue
            la, rb = read_run(a, need_eval=True), read_run(b, need_eval=True)
            acc = {round(r["epoch"], 3): r["test_acc"] for r in la.evaluated}
            per_seed.append({round(r["epoch"], 3): r["test_acc"] - acc[round(r["epoch"], 3)]
                             for r in rb.evaluated if round(r["epoch"], 3) in acc})
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
    papers = sorted({p for _, _, p, _ in curves})
    for p in papers:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/tta", help="bench/tta_suite.py's run folders")
    args = ap.parse_args()
    runs = Path(args.runs)
    names = copy_finished(runs) if runs.is_dir() else []
    names = sorted(p.name for p in DEST.iterdir() if (p / "summary.json").is_file()) if DEST.is_dir() else names
    if not names:
        raise SystemExit(f"tta_table: no finished runs in {runs} or {DEST}")
    costs = load_step_costs(OUT / "step_breakdown.json")
    variants, raw = variants_table(names, costs)
    curves = gap_curves()
    fig = gap_figure(curves, OUT / "tta_gap.png") if curves else None
    libraries = sorted({(DEST / n / "library.txt").read_text().strip()[:10] for n in names
                        if (DEST / n / "library.txt").is_file()})
    lines = ["# Time to accuracy: the gap study (issue 20)\n",
             f"`python bench/tta_table.py --runs {args.runs}` (tables by library {git('rev-parse', '--short', 'HEAD')}); "
             f"runs by `bench/tta_suite.py` with librar{'ies' if len(libraries) > 1 else 'y'} {', '.join(libraries)} "
             "(each run folder's library.txt), in-process, one core (`OMP_NUM_THREADS=1 taskset -c 0`) of this "
             "project's 2-core x86_64 VM while the other core ran tests and other work; real CIFAR-10, paper "
             "ResNet101 at 1/8 width, 25 local steps, batch 128 per worker, lr 0.05 decayed at 50% and 75%, "
             "whole test set every round (4 evaluations an epoch at 4 workers). Run folders (no weights): "
             "[tta/](tta/); step costs from step_breakdown.json. Ratios are local SGD's figure / ResIST's "
             "(>1: ResIST got there sooner or with fewer bytes); equal acc. = the lower of the two runs' "
             "best; 'there' = at local SGD's final accuracy less 0.5 point, for the seeds that reached it.\n",
             "## ResIST variants at 4 workers, 8 epochs (part 3)\n", *variants, ""]
    if fig:
        lines += ["## The gap over training (part 2)\n", f"![gap over training]({fig.name})\n"]
        for label, points, paper, seeds in curves:
            lines.append(f"- {label}, {seeds} seed(s): final gap {points[-1][1]:+.2f} (paper {paper:+.2f}); "
                         f"mean over the last quarter {statistics.fmean(g for e, g in points if e >= 0.75 * points[-1][0]):+.2f}")
    (OUT / "tta.md").write_text("\n".join(lines) + "\n")
    tmp = OUT / ".tta.json.tmp"
    tmp.write_text(json.dumps({"variants": raw, "gap": [{"setting": c[0], "points": c[1], "paper": c[2], "seeds": c[3]}
                                                         for c in curves], "runs": names}, indent=2))
    tmp.replace(OUT / "tta.json")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
