"""Workers of different speeds (issue 24): ResIST's round time and accuracy with one or two workers slowed
to half speed, with today's plan and with speed-balanced plans (``--balance``), against equal workers.

A worker is slowed with ``RESIST_FAULTS=slow:rank=R:speed=0.5``: after each step it sleeps as long as the
step took, so its measured compute is that of a machine half as fast and its numbers are unchanged. On the
in-process runtime the workers take turns on one core and each one's compute is timed alone, so a round's
parallel-equivalent time is the slowest worker's compute plus the synchronization, as on S machines.

Settings (real CIFAR-10, paper ResNet101 at 1/8 width, 4 workers, 25 local steps, 4 epochs):
``homog`` (equal workers), ``slow1_*`` (rank 1 at 0.5x), ``slow2_*`` (ranks 1 and 2 at 0.5x), each with
``none`` (the paper's plan), ``depth``, ``steps`` and ``depth+steps``. With ``--balance none`` the plan
does not look at time, so a slowed run trains the very model of ``homog`` (the table checks that their
losses agree bit for bit over the rounds both ran): those runs are cut to ``--short-rounds`` rounds, enough
for their round time.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/run.py hetero --data-dir ../shared/data/cifar10 --seeds 0 1

Table: per setting, over seeds, the median round time (parallel-equivalent compute + sync, every round
but the first, whose plan no speed has informed yet) and its ratio to ``homog``'s of the same seed, the
slowed workers' blocks and steps per round, best and final accuracy and the final's difference to
``homog``, and the time to ``homog``'s final accuracy less 0.5 point.
"""

from __future__ import annotations

import statistics

import common
from common import Spec, copy_runs, reach, record, spread, table

PRESET = "cifar10_cpu"
RUNS = "runs/hetero"
MODES = ("none", "depth", "steps", "depth+steps")
SLOW = {"homog": (), "slow1": (1,), "slow2": (1, 2)}


def add_arguments(ap) -> None:
    common.options(ap, seeds=([0], "seeds of every setting"), epochs=(4.0, "epochs of every full run"),
                   short_rounds=(6, "rounds of the slowed runs with --balance none (round time only)"),
                   workers=(4, "workers"))


def specs(args) -> list[Spec]:
    out = []
    for seed in args.seeds:
        for setting, slow in SLOW.items():
            for mode in MODES if slow else ("none",):
                name = f"{setting}_{mode.replace('+', '')}_s{seed}" if slow else f"homog_s{seed}"
                flags = ["--algo", "resist", "--workers", str(args.workers), "--seed", str(seed),
                         "--epochs", f"{args.epochs:g}", "--balance", mode, "--eval-every", "2"]
                if slow and mode == "none":
                    flags += ["--max-rounds", str(args.short_rounds)]
                env = {"RESIST_FAULTS": ";".join(f"slow:rank={r}:speed=0.5" for r in slow)} if slow else {}
                out.append(Spec(name, PRESET, flags, f"{setting} {mode}", setting, env=env))
    return out


def round_times(r: dict) -> list[float]:
    return [row["compute_s"] + row["comm_s"] for row in r["rows"][1:]]


def slowed(r: dict, key: str) -> float | None:
    """Mean over rounds (but the first) of the slowed workers' ``key`` (blocks or steps per worker)."""
    ranks = SLOW[r["suite"]]
    rows = [row for row in r["rows"][1:] if key in row]
    if not ranks or not rows:
        return None
    return statistics.fmean(row[key][w] for row in rows for w in ranks)


def unbalanced_time_to(homog: dict, unbalanced: dict, target: float) -> float | None:
    """Seconds the slowed run with today's plan takes to ``target``: it trains homog's model bit for bit,
    so it gets there at homog's round, each of its rounds taking its median measured round time."""
    hit = next((row["round"] for row in homog["run"].evaluated if row["test_acc"] >= target), None)
    return None if hit is None else (hit + 1) * statistics.median(round_times(unbalanced))


def tabulate(args, results: list[dict], env: dict) -> None:
    copy_runs(results, common.RESULTS / "hetero")
    homog = {r["seed"]: r for r in results if r["suite"] == "homog"}
    lines_out, raw = [], []
    for setting in SLOW:
        for mode in MODES if SLOW[setting] else ("none",):
            group = [r for r in results if r["label"] == f"{setting} {mode}"]
            if not group:
                continue
            med = {r["seed"]: statistics.median(round_times(r)) for r in group}
            ratio = [med[s] / statistics.median(round_times(homog[s])) for s in med if s in homog]
            full = [r for r in group if not (SLOW[setting] and mode == "none")]
            same = None
            if SLOW[setting] and mode == "none":  # the plan ignores time: the model must be homog's
                same = all(h["loss"] == x["loss"] for r in group if r["seed"] in homog
                           for h, x in zip(homog[r["seed"]]["rows"], r["rows"]))
            delta = [r["final_acc"] - homog[r["seed"]]["final_acc"] for r in full if r["seed"] in homog]
            target = {s: h["final_acc"] - 0.5 for s, h in homog.items()}
            reached = [reach(r, target[r["seed"]]) for r in full if r["seed"] in target]
            # Against today's plan on the same slowed workers, at a common accuracy: the lower of the two
            # bests (the unbalanced run's is homog's).
            none = {r["seed"]: r for r in results if r["label"] == f"{setting} none"}
            speedup = []
            for r in full:
                if SLOW[setting] and r["seed"] in none and r["seed"] in homog:
                    common_acc = min(r["best_acc"], homog[r["seed"]]["best_acc"])
                    mine, theirs = reach(r, common_acc), unbalanced_time_to(homog[r["seed"]], none[r["seed"]], common_acc)
                    speedup.append(theirs / mine if mine and theirs else None)
            row = {"setting": setting, "balance": mode, "seeds": sorted(med), "round_s": med,
                   "round_ratio": ratio, "slowed_blocks": [slowed(r, "blocks_per_worker") for r in group],
                   "slowed_steps": [slowed(r, "steps_per_worker") for r in group],
                   "best_acc": [r["best_acc"] for r in full], "final_acc": [r["final_acc"] for r in full],
                   "final_vs_homog": delta, "time_to_target_s": reached, "same_model_as_homog": same,
                   "speedup_vs_unbalanced_equal_acc": speedup}
            raw.append(row)
            lines_out.append([setting, mode, len(med), spread(list(med.values())), spread(ratio),
                              spread(row["slowed_blocks"], "{:.1f}"), spread(row["slowed_steps"], "{:.1f}"),
                              spread(row["best_acc"]) if full else f"= homog ({'bitwise' if same else 'NOT equal'})",
                              spread(row["final_acc"]) if full else "", spread(delta, "{:+.2f}") if full else "",
                              spread(reached, "{:.0f}") if full and None not in reached else
                              ("not reached" if full else ""),
                              spread(speedup, "{:.2f}x") if speedup and None not in speedup else ""])
    head = ["setting", "balance", "seeds", "round (s)", "vs homog", "slowed: blocks", "slowed: steps",
            "best acc (%)", "final acc (%)", "final - homog", "time to homog final - 0.5 (s)",
            "faster than balance none, equal acc."]
    lines = ["# Workers of different speeds (issue 24)\n",
             f"In-process, one core, real CIFAR-10, paper ResNet101 at 1/8 width, {args.workers} workers, 25 local "
             f"steps, {args.epochs:g} epochs (`--balance none` runs with a slowed worker: {args.short_rounds} "
             "rounds, their accuracy is homog's by construction, checked bit for bit on the losses); slowed "
             "workers at 0.5x (`RESIST_FAULTS=slow:rank=R:speed=0.5`). Round = parallel-equivalent compute + "
             "sync, median over every round but the first; times are seconds of this machine, measured while "
             "the other core ran other work. 'Faster than balance none' is the time the same slowed workers with "
             "today's plan need to reach this run's best accuracy (homog's round at which it first got there, times "
             "the unbalanced run's median round time: it trains homog's model) over the time this run needed. Run "
             "folders: [hetero/](hetero/).\n",
             *table(head, lines_out)]
    record("hetero", {"rows": raw, "runs": [common.public(r) for r in results]}, lines, args.command, env)
