"""The headline table (issue 20): ResIST against local SGD in every setting measured, at equal epochs and
at equal accuracy, read from the committed run folders (this suite trains nothing).

Per setting and seed, ResIST and local SGD trained the same epochs with the same seed. Per seed:
* gap: ResIST's best test accuracy minus local SGD's;
* time ratio at equal epochs: local SGD's parallel-equivalent time for the whole run / ResIST's;
* at equal accuracy, the target being the lower of the two runs' best scores (both reach it): local
  SGD's time / ResIST's, its bytes per worker / ResIST's, and its deterministic cost / ResIST's
  (steps x the step time measured on an idle core, ``docs/results/step_breakdown.json``, where that
  file measured the model and width);
* whether ResIST reaches local SGD's final accuracy less 0.5 point.
Then the mean (± standard deviation) over seeds. The rate-limited rows come from
``docs/results/rate_limited*.json``: per-round wall time (3 rounds, no accuracy), and from the to-target
run (``rate_limited_to_target.json``, part 4) time and bytes over the link at equal accuracy.

    python experiments/run.py headline   # docs/results/headline.{md,json} and the two README tables
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import common
from common import OUT, ROOT, Spec, ratios, reach, record, spread, table, write
from resist.analysis.target import TOLERANCE, load_step_costs

TABULATE_ONLY = True
RUNS = OUT


@dataclass
class Setting:
    name: str  # model, width, epochs, workers, seeds, hardware, data
    pairs: list[tuple[str, str]]  # (local SGD run folder, ResIST run folder) per seed, under docs/results
    paper_gap: str
    paper_speedup: str
    note: str = ""


PAPER_GAP = {2: "-0.41", 4: "-0.55", 8: "-0.55"}  # Table 2, CIFAR-10, ResNet101, 160 epochs (2 workers: 80)
PAPER_SPEEDUP = {4: "3.60x", 8: "3.77x"}  # Table 4, 160 epochs, wall-clock on their cluster
TTA = {  # the time-to-accuracy suite (experiments/suites/tta.py): 4 evaluations an epoch
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10": ("base_lsgd_w4", "base_resist_w4", 4),
    "ResNet101 1/8 width, 16 epochs, 4 workers, CPU (one core), CIFAR-10": ("len16_lsgd_w4", "len16_resist_w4", 4),
    "ResNet101 1/4 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10": ("wide4_lsgd_w4", "wide4_resist_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 8 workers, CPU (one core), CIFAR-10": ("w8_lsgd_w8", "w8_resist_w8", 8),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with a 10% cool-down":
        ("base_lsgd_w4", "var_cool10_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with a 20% cool-down":
        ("base_lsgd_w4", "var_cool20_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with a 50% cool-down":
        ("base_lsgd_w4", "var_cool50_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST carrying momentum, against local SGD "
    "restarting it": ("base_lsgd_w4", "var_carrymom_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, both carrying momentum":
        ("base_lsgdcm_w4", "var_carrymom_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with an outer step (lr 1.0, "
    "Nesterov momentum 0.5), against local SGD without it": ("base_lsgd_w4", "var_outer10m05_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, both with that outer step (local SGD: "
    "DiLoCo)": ("base_lsgdo10m05_w4", "var_outer10m05_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with that outer step and a 1-epoch "
    "local-SGD warm-up, against local SGD without either": ("base_lsgd_w4", "var_outer10m05warm1_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with that outer step on the shared "
    "layers only and a 1-epoch local-SGD warm-up, against local SGD without either":
        ("base_lsgd_w4", "var_outer10m05warm1sh_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 4 workers, CPU (one core), CIFAR-10, ResIST with that recipe, against local SGD "
    "with the outer step on every layer (DiLoCo)": ("base_lsgdo10m05_w4", "var_outer10m05warm1sh_w4", 4),
    "ResNet101 1/8 width, 8 epochs, 8 workers, CPU (one core), CIFAR-10, ResIST with that recipe":
        ("w8_lsgd_w8", "w8_lean_w8", 8),
}


def settings(runs: Path) -> list[Setting]:
    out = [
        Setting("ResNet101 1/8 width, 1 epoch, 4 workers, 2 seeds, CPU (shared core), CIFAR-10",
                [(f"cifar10_outer/outer_local_sgd_i25_a_w4_s{s}", f"cifar10_outer/outer_resist_i25_a_w4_s{s}")
                 for s in (0, 1)], PAPER_GAP[4], PAPER_SPEEDUP[4], "2 evaluations an epoch"),
        Setting("ResNet101 1/8 width, 8 epochs, 2 workers, 2 seeds, CPU (shared core), CIFAR-10",
                [(f"cifar10_long/local_sgd_w2_s{s}", f"cifar10_long/resist_w2_s{s}") for s in (0, 1)],
                PAPER_GAP[2], "-", "2 evaluations an epoch"),
        Setting("ResNet101 1/8 width, 8 epochs, 4 workers, 2 seeds, CPU (shared core), CIFAR-10",
                [(f"cifar10_long/local_sgd_w4_s{s}", f"cifar10_long/resist_w4_s{s}") for s in (0, 1)],
                PAPER_GAP[4], PAPER_SPEEDUP[4], "1 evaluation an epoch"),
        Setting("ResNet101 full width, 14 epochs, 4 workers, 1 seed, one H200, CIFAR-10",
                [("cifar10_gpu_w4/local_sgd_w4_s0", "cifar10_gpu_w4/resist_w4_s0")],
                PAPER_GAP[4], PAPER_SPEEDUP[4], "about 1 evaluation an epoch"),
    ]
    for name, (lsgd, resist, w) in TTA.items():
        pairs = [(f"tta/{lsgd}_s{s}", f"tta/{resist}_s{s}") for s in (0, 1, 2)
                 if (runs / f"tta/{lsgd}_s{s}" / "summary.json").is_file()
                 and (runs / f"tta/{resist}_s{s}" / "summary.json").is_file()]
        if pairs:
            seeds = f"{len(pairs)} seed{'s' if len(pairs) > 1 else ''}"
            out.append(Setting(name.replace(" workers,", f" workers, {seeds},", 1), pairs, PAPER_GAP[w],
                               PAPER_SPEEDUP.get(w, "-"), "4 evaluations an epoch" if w == 4 else "2 evaluations an epoch"))
    return out


def specs(args) -> list[Spec]:
    """The run folders the table reads (under docs/results)."""
    folders = dict.fromkeys(d for s in settings(args.runs) for pair in s.pairs for d in pair)  # shared baselines once
    return [Spec(d, "", []) for d in folders]


def measure(setting: Setting, runs: dict, costs) -> dict:
    per_seed = []
    for lsgd_dir, resist_dir in setting.pairs:
        lsgd, resist = runs[lsgd_dir], runs[resist_dir]
        lb, rb = lsgd.best(), resist.best()
        acc = ratios(lsgd, resist, min(lb, rb), costs)
        match = lsgd.evaluated[-1][lsgd.headline.key] - TOLERANCE["classification"]
        per_seed.append({
            "local_sgd": lsgd_dir, "resist": resist_dir, "local_sgd_best": lb, "resist_best": rb, "gap": rb - lb,
            "epoch_time_ratio": lsgd.rows[-1]["time_s"] / resist.rows[-1]["time_s"], "target": min(lb, rb),
            "acc_time_ratio": acc["time"], "acc_bytes_ratio": acc["bytes"], "acc_cost_ratio": acc["cost"],
            "match_target": match, "resist_matches": reach(resist, match) is not None,
        })
    col = lambda k, fmt="{:.2f}x": spread([s[k] for s in per_seed], fmt)  # noqa: E731
    return {"setting": setting.name, "note": setting.note, "seeds": per_seed,
            "row": [setting.name, col("local_sgd_best", "{:.2f}"), col("resist_best", "{:.2f}"),
                    f"{col('gap', '{:+.2f}')} ({setting.paper_gap})", col("epoch_time_ratio"), col("acc_time_ratio"),
                    col("acc_cost_ratio"), col("acc_bytes_ratio"),
                    f"{sum(s['resist_matches'] for s in per_seed)}/{len(per_seed)}", setting.paper_speedup, setting.note]}


def rate_limited_rows(fixed_rounds: bool = True) -> list[list[str]]:
    """The rate-limited rows: per-round wall time from the fixed-round runs (3 rounds, no accuracy), and
    from the to-target run (part 4; one seed) time and bytes over the link at equal accuracy and whether
    ResIST reached local SGD's final - 0.5. ``fixed_rounds=False``: the to-target rows only."""
    rows = []
    for name in ("rate_limited_probed", "rate_limited_w4", "rate_limited_to_target")[0 if fixed_rounds else 2:]:
        path = OUT / f"{name}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        run_args, by = data["args"], {}
        for r in data["rows"]:
            by.setdefault((r["workers"], r["ratio"], r["mbit"]), {})[r["algo"]] = r
        for (w, ratio, mbit), algos in sorted(by.items()):
            if "local_sgd" not in algos or "resist" not in algos or algos["resist"].get("skipped"):
                continue
            lsgd, resist = algos["local_sgd"], algos["resist"]
            per_round = f"{lsgd['wall_per_round_s'] / resist['wall_per_round_s']:.2f}x"
            link = f"{w} workers, a {mbit:g} Mbit/s link ({ratio:g}x of compute)"
            if not run_args.get("to_target"):
                rows.append([f"ResNet101 1/8 width, {link}, {run_args['max_rounds']} rounds, CPU, CIFAR-10 "
                             f"({name}.json)", "-", "-", "- (-)", per_round, "not measured", "-", "-", "-", "-",
                             "wall time per round; too few rounds for accuracy"])
                continue
            low, ref = resist.get("reached_lowest"), lsgd.get("reached_lowest")
            both = low is not None and ref is not None
            walls = both and low["wall_s"] and ref["wall_s"]
            flags = run_args.get("resist_flags") or ""
            rows.append([
                f"{run_args['preset']} (ResNet101 1/8 width), {link}, 1 seed, CPU (one core a rank), CIFAR-10"
                f"{f', ResIST with {flags}' if flags else ''} ({name}.json)",
                f"{lsgd['best_acc']:.2f}", f"{resist['best_acc']:.2f}", f"{resist['best_acc'] - lsgd['best_acc']:+.2f} ({PAPER_GAP.get(w, '-')})",
                per_round, f"{ref['time_s'] / low['time_s']:.2f}x" if both else "-", "-",
                f"{ref['sent_mb'] / low['sent_mb']:.2f}x" if both else "-",
                f"{int(resist.get('reached') is not None)}/1", "-",
                f"time measured over the link; wall time with evaluations at equal accuracy "
                + (f"{ref['wall_s'] / low['wall_s']:.2f}x" if walls else "-")
                + ("; ResIST stopped at local SGD's final - 0.5" if resist.get("reached") else "")
                + "; time ratio at equal epochs = per round"])
    return rows


HEAD = ["setting", "local SGD best (%)", "ResIST best (%)", "gap, points (paper's)", "time ratio, equal epochs",
        "time ratio, equal accuracy", "cost ratio, equal accuracy", "bytes ratio, equal accuracy",
        "ResIST reaches local SGD final - 0.5", "paper's speed-up", "note"]


def splice(path: Path, lines: list[str]) -> None:
    """Replace the text between the headline markers of ``path`` (written whole, atomically)."""
    text = path.read_text()
    start, end = "<!-- headline:start -->", "<!-- headline:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"headline: {path} has no {start} ... {end} markers")
    write(path, re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: "\n".join([start, *lines, end]), text,
                       flags=re.S))


#: The gap study's variants whose rows the README shows: the recipe of ``cifar10_cpu_fast_lean`` (the outer
#: step on the shared layers, a 1-epoch warm-up), against local SGD and DiLoCo; the outer step alone
#: (``cifar10_cpu_fast``) and the other variants are in headline.md.
FRONT_VARIANTS = ("var_outer10m05warm1sh",)


def is_front(s: Setting) -> bool:
    """Whether the README shows ``s``: every setting but the gap study's variants other than the front ones."""
    return all("/var_" not in resist or any(f"/{v}_w" in resist for v in FRONT_VARIANTS) for _, resist in s.pairs)


def tabulate(args, results: list[dict], env: dict) -> None:
    costs = load_step_costs(OUT / "step_breakdown.json")
    runs = {r["name"]: r["run"] for r in results}
    chosen = settings(args.runs)
    measured = [measure(s, runs, costs) for s in chosen]
    rows = [m["row"] for m in measured] + rate_limited_rows()
    source = next(iter(costs.values())).source
    about = ("Ratios are local SGD's figure / ResIST's (>1: ResIST sooner or fewer bytes); equal accuracy = the lower "
             "of the two runs' best scores, per seed; mean ± sd over seeds. Times are parallel-equivalent compute + "
             "synchronization measured while the runs trained (noisy where the core was shared); cost = steps x "
             "step time measured once on an idle core. The paper's gap is Table 2's (160 epochs; 80 at 2 workers), "
             "its speed-up Table 4's (wall-clock to 160 epochs, not at equal accuracy).")
    lines = table(HEAD, rows)
    record("headline", {"step_costs": source, "settings": [{k: v for k, v in m.items() if k != "row"} for m in measured],
                        "rows": rows, "head": HEAD}, ["# Headline: ResIST vs local SGD at equal accuracy\n",
                                                     f"Run folders under docs/results; step costs {source}. {about}\n",
                                                     *lines], args.command, env)
    if common.RESULTS.resolve() == OUT:  # the README tables, when the results are the repository's
        splice(OUT / "README.md", [f"`{args.command}` (library {env['library']}; run folders under docs/results; "
                                   f"step costs {source}). {about}", "", *lines])
        # The README keeps to a front door: the settings, the preset's recipe and the link run to a
        # target; the other variants' rows and the per-round link rows are in headline.md and status.md.
        front = [m["row"] for s, m in zip(chosen, measured) if is_front(s)] + rate_limited_rows(fixed_rounds=False)
        left = len(rows) - len(front)
        splice(ROOT / "README.md", [*table(HEAD, front), *([""] if left else []),
                                    *([f"{left} more rows (the gap study's other variants, per-round link times): "
                                       "[headline.md](docs/results/headline.md)."] if left else [])])
        splice(ROOT / "docs" / "status.md", lines)
