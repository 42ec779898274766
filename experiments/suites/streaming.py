"""MEASURED: overlapped ResIST (``--overlap``) against blocking ResIST, local SGD and Streaming DiLoCo
over rate-limited links (issue 23; the rule is docs/streaming.md).

Two measurements, each where it can be made on this project's 2-core machine:

* **Round time over a rate-limited link.** Every method trains ``--rounds`` rounds between real gloo
  processes, each rank in a network namespace of its own behind an htb egress limit (the network of the
  ``rate_limited`` suite, which this suite reuses: it needs root), with no evaluation and no checkpoint
  before the last round, so that a round's time is its compute plus the part of its transfer that
  compute did not hide (``compute_s`` + ``comm_s`` of metrics.jsonl; the overlapped wait at step tau is
  in ``compute_s``). Link rates are set per worker count so that local SGD's transfer per round is 1x
  and 10x its compute (``--ratios``; from a calibration run of local SGD on unlimited links). The
  steady state is the rounds between the first (nothing in flight yet) and the last (waited for at once).
  The bound for overlapped ResIST is max(C, L), with C and L blocking ResIST's compute and transfer per
  round through the same link: blocking ResIST takes C + L.
* **Time to a target accuracy on the 1x link.** Training to accuracy over a 1x link takes hours per run
  here, so it is composed of two measurements: the round at which each method's loopback run (in-process,
  ``--acc-runs``: 8 epochs, 4 workers, its evaluation every round) first reaches the target, and that
  method's measured link round times (the first round, then the steady-state mean per round). This is
  sound because neither the runtime nor the evaluations change what a run computes (in-process and gloo
  are bitwise equal at 2 workers and agree to rounding at 4: tests/distributed/test_equivalence.py;
  overlapped ResIST's evaluations do not change its bits: tests/unit/test_overlap.py), and it is said
  beside every figure it gives. Bytes to target are the loopback runs' own counters (identical to gloo's).

    sudo python experiments/run.py streaming --data-dir ../shared/data/cifar10 --workers 2 4 --ratios 1 10 \\
        --acc-runs RUNS   # the loopback runs RUNS/METHOD_w4_sSEED (below)

The loopback runs: ``resist train cifar10_cpu_long --workers 4 --seed S --eval-every 1`` with the method's
flags (``--list`` prints them; ``--train-acc`` trains the missing ones first). The byte-level GPT:

    sudo python experiments/run.py streaming --preset gpt_char_cpu --workers 4 --ratios 1 --acc-seeds 0 \\
        --acc-runs RUNS --train-acc --name streaming_gpt -- --width 0.25 --context 64 --batch-size 16 \\
        --text-bytes 1000000 --eval-limit 512
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
from pathlib import Path

import common
from common import Spec, options, read_run, record
from suites import rate_limited as rl

RUNS = "runs/streaming"


def methods(args) -> list[str]:
    """The compared methods: local SGD, blocking ResIST, overlapped ResIST at each tau with each merge
    (``overlapTAU``: Streaming DiLoCo's mix; ``overlapTAU-delta``) and with prefetched blocks
    (``overlapTAU-prefetch``: ``--prefetch`` with the delta merge, ``overlapTAU-prefetch-mix`` with
    mixing), with momentum restarted at the merge (``overlapTAU-restart``: ``--overlap-restart`` with the
    delta merge), the ablations between blocking ResIST and tau (``overlapTAU-alpha0``: the steps before the
    merge are dropped from the weights but stay in the momentum; ``overlapTAU-erase``: dropped from both)
    with their control (``resist-cutTAU``: blocking ResIST with the steps an erased overlap does not keep, tau
    of every H, cut from the end of its schedule), Streaming DiLoCo."""
    return ["local_sgd", "resist", *(f"overlap{t}{'' if m == 'mix' else '-' + m}" for t in args.overlap
                                     for m in args.merges),
            *(f"overlap{t}-prefetch{'-mix' if m == 'mix' else ''}" for t in args.prefetch for m in args.merges),
            *(f"overlap{t}-restart" for t in args.restart),
            *(f"overlap{t}-{k}" for t in args.erase for k in ("alpha0", "erase")),
            *(f"resist-cut{t}" for t in args.erase), "streaming_diloco"]


def link_method(method: str) -> str:
    """The link run that times ``method``: the merge rule changes no byte and no step, so overlapped
    ResIST's merges share their tau's run; prefetching sends more, earlier, so it has its own."""
    return method.removesuffix("-mix") if "-prefetch" in method else method.split("-")[0]


def method_flags(method: str, args) -> list[str]:
    """``resist train`` flags of each compared method (the overlap, mixing and fragments from the options)."""
    if method.startswith("overlap"):
        tau, _, merge = method[len("overlap"):].partition("-")
        mix = ["--mix-alpha", str(args.mix_alpha)]
        rule = {"": mix, "delta": ["--overlap-merge", "delta"], "prefetch": ["--overlap-merge", "delta", "--prefetch"],
                "prefetch-mix": [*mix, "--prefetch"], "restart": ["--overlap-merge", "delta", "--overlap-restart"],
                "alpha0": ["--mix-alpha", "0"], "erase": ["--mix-alpha", "0", "--overlap-restart"]}[merge]
        return ["--algo", "resist", "--overlap", tau, *rule]
    if method.startswith("resist-cut"):  # the preset's epochs times (H - tau) / H, its schedule compressed
        from resist.presets import preset

        cfg, tau = preset(args.preset), int(method.removeprefix("resist-cut"))
        epochs = cfg.optim.epochs * (cfg.algo.local_iters - tau) / cfg.algo.local_iters
        return ["--algo", "resist", "--epochs", f"{epochs:g}"]
    return {"local_sgd": ["--algo", "local_sgd"],
            "resist": ["--algo", "resist"],
            "streaming_diloco": ["--algo", "streaming_diloco", "--fragments", str(args.fragments),
                                 "--sync-delay", str(args.sync_delay), "--mix-alpha", str(args.mix_alpha)]}[method]


def add_arguments(ap) -> None:
    options(ap, preset="cifar10_cpu_long", workers=[2, 4],
            ratios=([1.0, 10.0], "local SGD's transfer / compute per round to set the link rates for"),
            all_at=([1.0], "ratios at which every method runs; at the others only --slow-methods"),
            slow_methods=(["resist", "overlap20"], "methods run at the ratios not in --all-at (the bound's)"),
            rounds=(6, "rounds per link run at the --all-at ratios (the first and the last are not steady state)"),
            slow_rounds=(4, "rounds per link run at the other ratios"),
            overlap=([5, 20], "--overlap TAU of overlapped ResIST, one method per value"),
            merges=(["mix", "delta"], "--overlap-merge rules compared (each tau's link run times them all)",
                    ["mix", "delta"]), mix_alpha=(0.5, "--mix-alpha of both streaming methods"),
            prefetch=([], "--overlap TAU values also run with --prefetch (each merge): overlapTAU-prefetch[-mix]"),
            restart=([], "--overlap TAU values also run with --overlap-restart (delta merge; the link run of their "
                         "tau): overlapTAU-restart"),
            erase=([], "--overlap TAU values also run with --mix-alpha 0 (overlapTAU-alpha0) and with it and "
                       "--overlap-restart (overlapTAU-erase): the steps before the merge left out of the weights, "
                       "then also of the momentum (the link run of their tau), and blocking ResIST with tau of "
                       "every H steps cut (resist-cutTAU, the control: the steps an erased overlap does not keep)"),
            fragments=(5, "Streaming DiLoCo's --fragments"), sync_delay=(4, "Streaming DiLoCo's --sync-delay"),
            delay_ms=(0.0, "one-way delay added per packet (netem)"), seed=0, name="streaming",
            acc_runs=(str, "folder of the loopback accuracy runs METHOD_wW_sSEED (see --list)"),
            acc_workers=(4, "workers of the loopback accuracy runs (their link round times come from this count)"),
            acc_seeds=[0, 1],
            train_acc=(False, "train the loopback runs missing from --acc-runs first (in-process, one after another)"),
            reuse=(False, "reuse finished link runs of the same configuration and link probes of the same size"))
    ap.add_argument("--skip", nargs="+", default=[], metavar="WORKERS:RATIO", help="links not to run (e.g. 4:10)")


def specs(args) -> list[Spec]:
    """The loopback accuracy runs (``--list``); the link runs are made by `execute` in namespaces."""
    return [Spec(f"{m}_w{args.acc_workers}_s{s}", args.preset,
                 [*method_flags(m, args), "--workers", str(args.acc_workers), "--seed", str(s), "--eval-every", "1"], m)
            for s in args.acc_seeds for m in methods(args)]


def link_run(method: str, workers: int, mbit: float | None, args, out: Path, rounds: int) -> list[dict]:
    """``rounds`` rounds of ``method`` on ``workers`` gloo ranks over links of ``mbit`` (None: unlimited);
    its metrics rows. A finished run of the same configuration in ``out`` is reused (``--reuse``)."""
    flags = [*method_flags(method, args), "--max-rounds", str(rounds), "--eval-every", "100000",
             "--checkpoint-every", "100000", *args.extra]
    key = json.dumps([method, workers, mbit, args.preset, args.seed, args.delay_ms, flags])
    if not (args.reuse and (out / "summary.json").is_file() and (out / "run.txt").is_file()
            and (out / "run.txt").read_text() == key):
        rl.launch(workers, mbit, args, f"{method} on {workers} ranks at {mbit} Mbit/s", [
            "-m", "resist.cli", "train", args.preset, *flags, "--workers", str(workers), "--runtime", "dist",
            "--backend", "gloo", "--data-dir", args.data_dir, "--out", str(out), "--force", "--seed", str(args.seed),
            "--timeout", "3600"])
        (out / "run.txt").write_text(key)
    else:
        print(f"[streaming] reusing {out}", flush=True)
    return read_run(out).rows


def round_times(rows: list[dict]) -> dict:
    """A link run's per-round seconds as means over the steady-state rounds (all but the first and the
    last, when there are 3+): wall time between the ends of consecutive rounds (everything the trainer
    did: the overlapped waits, its bookkeeping collectives, which on one group would queue behind a
    transfer in flight), its compute (``compute_s``: the overlapped wait at step tau included) and
    synchronization (``comm_s``), and bytes; the first round's on its own."""
    from resist.analysis.projection import round_bytes

    ends = [r["elapsed_s"] for r in rows]
    # The first round's elapsed time holds the start-up (loaders, first connections): its compute + sync.
    walls = [rows[0]["compute_s"] + rows[0]["comm_s"], *(b - a for a, b in zip(ends, ends[1:]))]
    steady = slice(1, -1) if len(rows) >= 3 else slice(None)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"rounds": len(rows), "steady_rounds": len(rows[steady]),
            "compute_s": mean([r["compute_s"] for r in rows[steady]]),
            "comm_s": mean([r["comm_s"] for r in rows[steady]]),
            "wall_s": mean(walls[steady]), "first_wall_s": walls[0], "bytes": mean(round_bytes(rows)[steady])}


def execute(args, specs: list[Spec]) -> dict | None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("streaming: needs root and iproute2 (ip, tc) to make network namespaces; nothing was run")
        return None
    if any(len(x.split(":")) != 2 for x in args.skip):
        raise SystemExit(f"streaming: --skip takes WORKERS:RATIO pairs, got {' '.join(args.skip)}")
    if args.train_acc and not args.acc_runs:
        raise SystemExit("streaming: --train-acc trains into --acc-runs: name the folder")
    if args.acc_runs and not args.train_acc and not Path(args.acc_runs).is_dir():
        raise SystemExit(f"streaming: --acc-runs {args.acc_runs} is not a folder")
    import atexit

    atexit.register(rl.cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (rl.cleanup(), sys.exit(130)))
    runs, links = Path(args.runs), []
    for spec in specs if args.train_acc else []:
        common.launch(spec, Path(args.acc_runs), args.data_dir, args.extra)
    skip = {tuple(float(x) for x in item.split(":")) for item in args.skip}
    for w in args.workers:
        if all((w, r) in skip for r in args.ratios):
            continue
        free = link_run("local_sgd", w, None, args, runs / f"local_sgd_w{w}_unlimited", args.slow_rounds)
        cal = round_times(free)
        model_bytes = int(cal["bytes"] / (2 * (w - 1) / w))  # what one local-SGD round all-reduces
        for ratio in (r for r in args.ratios if (w, r) not in skip):
            mbit = round(cal["bytes"] * 8 / (ratio * cal["compute_s"]) / 1e6, 3)
            link = rl.probe(w, mbit, args, runs / f"probe_w{w}_r{ratio:g}.json", model_bytes)
            print(f"[streaming] w{w} {ratio:g}x: {mbit} Mbit/s, probed {link['goodput_mbit']:.3f}", flush=True)
            full = ratio in args.all_at
            for m in dict.fromkeys(link_method(m) for m in (methods(args) if full else args.slow_methods)):
                got = round_times(link_run(m, w, mbit, args, runs / f"{m}_w{w}_r{ratio:g}",
                                           args.rounds if full else args.slow_rounds))
                print(f"[streaming] {m} w{w} {ratio:g}x: {got}", flush=True)
                links.append({"workers": w, "ratio": ratio, "mbit": mbit, "goodput_mbit": link["goodput_mbit"],
                              "method": m, **got})
    return {"links": links, "accuracy": accuracy(args) if args.acc_runs else None}


def accuracy(args) -> dict:
    """The loopback runs' scores and, per run, the round and bytes at which it first reached each target."""
    from resist.analysis.target import TOLERANCE, default_targets, time_to

    runs = {}
    for m in methods(args):
        for s in args.acc_seeds:
            path = Path(args.acc_runs) / f"{m}_w{args.acc_workers}_s{s}"
            if (path / "summary.json").is_file():
                runs[(m, s)] = read_run(path)
    if not runs:
        return {"runs": [], "targets": []}
    head = next(iter(runs.values())).headline  # accuracy, or bits per byte (lower is better) for the GPT
    finals = {k: r.evaluated[-1][head.key] for k, r in runs.items()}
    bests = {k: r.best() for k, r in runs.items()}
    order = sorted(runs, key=lambda k: k[0] != "local_sgd")  # default_targets reads the first local SGD run
    targets = [{"name": t.name, "value": t.value} for t in default_targets([runs[k] for k in order])]
    lsgd = [finals[k] for k in finals if k[0] == "local_sgd"]
    if len(lsgd) > 1:  # local SGD's final over every seed, not the first one's
        tol = TOLERANCE[next(iter(runs.values())).task]
        mean = statistics.mean(lsgd)
        targets[-1] = {"name": f"local SGD final (mean of {len(lsgd)}) {'-' if head.higher_is_better else '+'} {tol:g}",
                       "value": mean - tol if head.higher_is_better else mean + tol}
    rows = []
    for (m, s), run in runs.items():
        reached = {}
        for t in targets:
            got = time_to(run, t["value"])
            reached[t["name"]] = None if got is None else {"rounds": got.round + 1, "sent_bytes": got.sent_bytes,
                                                           "loopback_time_s": got.time_s}
        rows.append({"method": m, "seed": s, "path": str(run.path), "final": finals[(m, s)],
                     "best": bests[(m, s)], "rounds": len(run.rows), "time_s": run.rows[-1]["time_s"],
                     "reached": reached})
    return {"runs": rows, "targets": targets, "headline": {"key": head.key, "name": head.name, "unit": head.unit,
                                                         "higher_is_better": head.higher_is_better}}


def link_time(links: list[dict], method: str, workers: int, ratio: float, rounds: int) -> float | None:
    """Seconds ``rounds`` rounds of ``method`` take over that link: its first round, then its steady mean."""
    key = (link_method(method), workers, ratio)
    got = next((x for x in links if (x["method"], x["workers"], x["ratio"]) == key), None)
    return None if got is None else got["first_wall_s"] + (rounds - 1) * got["wall_s"]


def fmt(x: float | None, spec: str = ".1f", none: str = "not reached") -> str:
    return none if x is None else format(x, spec)


def tabulate(args, results: dict | None, env: dict) -> None:
    if not results:
        return
    links, acc = results["links"], results["accuracy"]
    env["cores_used"] = len(os.sched_getaffinity(0))
    taus = ", ".join(str(t) for t in args.overlap)
    lines = [f"# Overlapped ResIST over rate-limited links ({args.name})\n",
             f"overlapTAU = ResIST `--overlap TAU --mix-alpha {args.mix_alpha}`, overlapTAU-delta = "
             f"`--overlap TAU --overlap-merge delta` (TAU = {taus} of the preset's local steps per round; a tau's "
             "link run times both merges: they move the same bytes in the same steps); "
             + (f"overlapTAU-prefetch = `--overlap TAU --overlap-merge delta --prefetch`, overlapTAU-prefetch-mix = "
                f"`--overlap TAU --mix-alpha {args.mix_alpha} --prefetch` (TAU = {', '.join(str(t) for t in args.prefetch)}; "
                "a link run of their own, shared by both merges: they send more, earlier); "
                if args.prefetch else "") +
             (f"overlapTAU-restart = `--overlap TAU --overlap-merge delta --overlap-restart` (TAU = "
              f"{', '.join(str(t) for t in args.restart)}; timed by its tau's link run); " if args.restart else "") +
             (f"overlapTAU-alpha0 = `--overlap TAU --mix-alpha 0`, overlapTAU-erase = `--overlap TAU --mix-alpha 0 "
              f"--overlap-restart` (TAU = {', '.join(str(t) for t in args.erase)}: the ablations between blocking "
              "ResIST and tau, the steps before the merge left out of the weights, then of the momentum too; timed "
              "by their tau's link run), resist-cutTAU = blocking ResIST with `--epochs` cut by tau / H (their "
              "control: as many steps as an erased overlap keeps; timed by blocking ResIST's link run); "
              if args.erase else "") +
             f"streaming_diloco = `--fragments {args.fragments} --sync-delay "
             f"{args.sync_delay} --mix-alpha {args.mix_alpha}` (no outer optimizer: at this scale DiLoCo's hurts, "
             f"cifar10_outer.md). Preset {args.preset}. Link runs: {args.rounds} rounds at "
             f"{', '.join(f'{r:g}x' for r in args.all_at)}, {args.slow_rounds} at the other ratios; gloo ranks in "
             f"network namespaces behind an htb egress limit, {env['cores_used']} cores (a core per rank where "
             "there are enough, else shared round robin); no evaluation or checkpoint before the last round. "
             "Per-round figures are means over the steady-state rounds (all but the first and the last).\n",
             "## Round time against max(compute, link)\n",
             "C: blocking ResIST's compute per round through that link; L: the rest of its round (the "
             "synchronization and the trainer's bookkeeping), so that blocking takes C + L. Round = wall time "
             "between the ends of consecutive rounds. Goal for overlapped ResIST: at most 1.10 x max(C, L).\n",
             "| workers | link (Mbit/s) | probed (Mbit/s) | local SGD transfer / compute | C (s) | L (s) | max(C, L) (s) "
             "| blocking (s) | method | overlapped (s) | overlapped / max(C, L) | goal <= 1.10 | overlapped / blocking |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in sorted({x["workers"] for x in links}):
        for ratio in sorted({x["ratio"] for x in links if x["workers"] == w}):
            got = {x["method"]: x for x in links if (x["workers"], x["ratio"]) == (w, ratio)}
            if "resist" not in got:
                continue
            b = got["resist"]
            c, l = b["compute_s"], b["wall_s"] - b["compute_s"]
            bound = max(c, l)
            for m in (m for m in methods(args) if m.startswith("overlap") and m in got):
                o = got[m]
                lines.append(f"| {w} | {b['mbit']:g} | {b['goodput_mbit']:.3f} | {ratio:g}x | {c:.2f} | "
                             f"{l:.2f} | {bound:.2f} | {b['wall_s']:.2f} | {m} | {o['wall_s']:.2f} | "
                             f"{o['wall_s'] / bound:.2f}x | {'met' if o['wall_s'] <= 1.10 * bound else 'missed'} | "
                             f"{o['wall_s'] / b['wall_s']:.2f}x |")
    lines += ["", "## Every link run\n", "| workers | ratio | method | compute / round (s) | sync / round (s) | "
              "round, wall (s) | first round (s) | MB sent per worker per round | rounds (steady) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for x in links:
        lines.append(f"| {x['workers']} | {x['ratio']:g}x | {x['method']} | {x['compute_s']:.2f} | {x['comm_s']:.2f} | "
                     f"{x['wall_s']:.2f} | {x['first_wall_s']:.2f} | {x['bytes'] / 1e6:.3f} | "
                     f"{x['rounds']} ({x['steady_rounds']}) |")
    if acc and acc["runs"]:
        lines += accuracy_lines(args, links, acc)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    plot_to_target(args, links, acc)
    lines += ["", f"Plot: [{args.name}.png]({args.name}.png)"]
    record(args.name, {"args": {k: v for k, v in vars(args).items() if k != "extra"} | {"extra": args.extra},
                       **results}, lines, "sudo " + args.command, env)


def accuracy_lines(args, links: list[dict], acc: dict) -> list[str]:
    w, full = args.acc_workers, min(args.all_at)
    by = lambda m: [r for r in acc["runs"] if r["method"] == m]  # noqa: E731
    ovls = [m for m in methods(args) if m.startswith("overlap") and by(m)]
    head = acc["headline"]
    unit, up = f" ({head['unit']})" if head["unit"] else "", head["higher_is_better"]
    out = ["", f"## {head['name'].capitalize()} (loopback runs, {w} workers)\n",
           f"| method | seeds | final{unit} mean ± sd | per seed | best{unit} | rounds |", "|---|---|---|---|---|---|"]
    for m in methods(args):
        rs = by(m)
        if not rs:
            continue
        f = [r["final"] for r in rs]
        sd = f"{statistics.stdev(f):.2f}" if len(f) > 1 else "-"
        out.append(f"| {m} | {', '.join(str(r['seed']) for r in rs)} | {statistics.mean(f):.2f} ± {sd} | "
                   f"{', '.join(f'{x:.2f}' for x in f)} | {(max if up else min)(r['best'] for r in rs):.2f} | {rs[0]['rounds']} |")
    if by("resist"):
        out.append("")
        for m in ovls:
            seeds = {r["seed"] for r in by(m)} & {r["seed"] for r in by("resist")}
            fin = lambda name: statistics.mean(r["final"] for r in by(name) if r["seed"] in seeds)  # noqa: E731
            d = fin(m) - fin("resist")
            goal = f"goal: at most 0.5 below; {'met' if d >= -0.5 else 'missed'}" if up else "lower is better"
            out.append(f"- {m} minus blocking ResIST, final {head['name']} (mean over seeds {sorted(seeds)}): "
                       f"{d:+.3f} ({goal}).")
        for t in args.erase:  # the control: what the steps alone cost, and what the overlap costs beyond them
            cut, erased = f"resist-cut{t}", f"overlap{t}-erase"
            for m, base, what in ((cut, "resist", "the steps alone"), (erased, cut, "beyond its lost steps")):
                seeds = {r["seed"] for r in by(m)} & {r["seed"] for r in by(base)}
                if seeds:
                    d = statistics.mean(r["final"] for r in by(m) if r["seed"] in seeds) - statistics.mean(
                        r["final"] for r in by(base) if r["seed"] in seeds)
                    out.append(f"- {m} minus {base} ({what}), final {head['name']} (mean over seeds "
                               f"{sorted(seeds)}): {d:+.3f}.")
    out += ["", f"## Time to target on the {full:g}x link ({w} workers), composed\n",
            f"Rounds to the target from the loopback runs; seconds = that method's measured {full:g}x-link round "
            "times for that many rounds (first round, then the steady mean). Bytes: per worker, the loopback "
            "runs' counters. Means over the seeds; a method with a seed that never reached the target has no "
            "time.\n",
            "| target | method | reached (seeds) | rounds | time on link (s) | MB per worker | "
            "Streaming DiLoCo's time / this |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for t in acc["targets"]:
        got = {}  # method -> (seeds reached, seeds, rounds, seconds, MB), means over the seeds that reached it
        for m in methods(args):
            rs = by(m)
            if not rs:
                continue
            hit = [r["reached"][t["name"]] for r in rs if r["reached"][t["name"]]]
            mean = lambda xs: statistics.mean(xs) if xs and None not in xs else None  # noqa: E731
            got[m] = (len(hit), len(rs), mean([h["rounds"] for h in hit]),
                      mean([link_time(links, m, w, full, h["rounds"]) for h in hit]),
                      mean([h["sent_bytes"] / 1e6 for h in hit]))
        times = {m: g[3] if g[0] == g[1] else None for m, g in got.items()}
        sdl = times.get("streaming_diloco")
        for m, (n, of, rounds, secs, mb) in got.items():
            vs = f"{sdl / times[m]:.2f}x" if sdl and times[m] else "-"
            out.append(f"| {t['name']} ({t['value']:.3g}{head['unit']}) | {m} | {n}/{of} | {fmt(rounds)} | {fmt(secs)} | "
                       f"{fmt(mb, '.2f')} | {vs} |")
        reached = {m: v for m, v in times.items() if v is not None}
        if reached:
            first = min(reached, key=reached.get)
            for m in ovls:
                ok = times[m] == reached[first] and sdl is not None and sdl / times[m] >= 1.5  # ties count as first
                sdl_text = ("not run" if "streaming_diloco" not in got
                            else "not reached" if sdl is None else f"{sdl:.0f} s")
                verdicts.append(f"{t['name']}: first to reach it: {first}; {m}: "
                                f"{'not reached' if times[m] is None else f'{times[m]:.0f} s'}, Streaming DiLoCo "
                                f"{sdl_text} (goal: {m} first and Streaming "
                                f"DiLoCo's time >= 1.5x its own: {'met' if ok else 'missed'}).")
    out += ["", *(f"- {v}" for v in verdicts)] if verdicts else []
    return out


def plot_to_target(args, links: list[dict], acc: dict | None) -> None:
    """The headline score against seconds on the 1x link (composed as in the table), one line per loopback run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    full = min(args.all_at)
    for k, m in enumerate(methods(args)):
        for r in (acc or {}).get("runs", []):
            if r["method"] != m:
                continue
            key = acc["headline"]["key"]
            rows = [x for x in read_run(r["path"]).rows if key in x]
            t = [link_time(links, m, args.acc_workers, full, int(x["round"]) + 1) for x in rows]
            if None in t:
                continue
            ax.plot(t, [x[key] for x in rows], color=f"C{k}", alpha=0.8,
                    label=m if r["seed"] == args.acc_seeds[0] else None)
    ax.set_xlabel(f"seconds on the {full:g}x link ({args.acc_workers} workers; composed)")
    if acc and acc.get("headline"):
        ax.set_ylabel(acc["headline"]["name"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(common.RESULTS / f"{args.name}.png", dpi=110)
    plt.close(fig)
