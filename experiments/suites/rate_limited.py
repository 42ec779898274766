"""MEASURED, not projected: ResIST, local SGD and data parallel between real processes over rate-limited
links, beside what ``resist project`` predicts for the same links.

Each gloo rank runs in a network namespace of its own, joined by a veth pair to a bridge that lives in
one more namespace, with an htb rate limit on every rank's egress (and a fixed netem delay): nothing is
added to the host's own network, and only addresses inside the namespaces made here are used
(10.77.0.0/24). Every namespace (and with it every link) is removed on exit, also on Ctrl-C and errors.
It needs root (``ip netns``, ``tc``); without it, it says so and exits.

Link rates are chosen per worker count so that local SGD's communication per round is about 0.1x, 1x
and 10x its compute per round (from a calibration run on unlimited links). For the full-width paper
ResNet101 on an H100 (docs/results/paper_scale_projection.md: at 2 workers local SGD's round is 1.44 s
of compute and 165.5 MB per worker, which a 1 Gbit/s link carries in 1.32 s) these ratios are links of
about 10, 1 and 0.1 Gbit/s. Each run is a whole ``resist train`` on real CIFAR-10, its ranks
pinned round robin to the cores this script may use (one core per rank when there are enough: run it
under ``taskset`` to choose); per-round wall time and time to a common target accuracy come from its metrics.jsonl.

    sudo python experiments/run.py rate_limited --data-dir ../shared/data/cifar10 --workers 2 --ratios 0.1 1 10

``--to-target`` trains to an accuracy instead of comparing a fixed schedule (issue 20, part 4): local SGD
trains its whole schedule over each link, its final score less 0.5 point (or ``--target``) is the target,
and ResIST (with ``--resist-flags``, e.g. the flags that make ``cifar10_cpu_long`` the
``cifar10_cpu_fast_lean`` recipe, as below) stops there (``--stop-at``); a table gives each run's round,
time, wall time, bytes and calibrated projection to the target:

    sudo python experiments/run.py rate_limited --preset cifar10_cpu_long --data-dir ../shared/data/cifar10 \
        --workers 2 --ratios 1 --algos local_sgd resist --to-target \
        --resist-flags="--outer-lr 1.0 --outer-momentum 0.5 --warmup-epochs 1 --no-outer-blocks" \
        --name rate_limited_to_target -- --eval-every 2
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import common
from common import ROOT, Spec, options, reach, read_run, record

PREFIX = f"rs{os.getpid() % 100000}"
SUBNET = "10.77.0"
PORT = 29577
ALGOS = ("local_sgd", "resist", "data_parallel")
RUNS = "runs/rate_limited"
_made: list[str] = []


def sh(*cmd: str, ns: str | None = None) -> None:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")


def cleanup() -> None:
    """Delete every namespace made here; deleting a namespace deletes the links inside it."""
    while _made:
        subprocess.run(["ip", "netns", "del", _made.pop()], capture_output=True)


def make_network(workers: int, mbit: float | None, delay_ms: float) -> list[str]:
    """Namespaces ``PREFIX-k`` (rank k at 10.77.0.(k+1)) bridged in ``PREFIX-br``; returns their names."""
    bridge = f"{PREFIX}-br"
    sh("ip", "netns", "add", bridge)
    _made.append(bridge)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=bridge)
    sh("ip", "link", "set", "br0", "up", ns=bridge)
    names = []
    for k in range(workers):
        ns = f"{PREFIX}-{k}"
        sh("ip", "netns", "add", ns)
        _made.append(ns)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"p{k}", ns=ns)
        sh("ip", "link", "set", f"p{k}", "netns", bridge, ns=ns)
        sh("ip", "link", "set", f"p{k}", "master", "br0", ns=bridge)
        sh("ip", "link", "set", f"p{k}", "up", ns=bridge)
        sh("ip", "addr", "add", f"{SUBNET}.{k + 1}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        if mbit is not None:  # egress: htb for the rate, netem under it for the delay
            sh("tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10", ns=ns)
            sh("tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb",
               "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", ns=ns)
            if delay_ms > 0:  # needs the kernel's sch_netem
                sh("tc", "qdisc", "add", "dev", "eth0", "parent", "1:10", "handle", "10:", "netem",
                   "delay", f"{delay_ms}ms", ns=ns)
        names.append(ns)
    return names


def launch(workers: int, mbit: float | None, args, what: str, argv: list[str]) -> None:
    """``python argv`` as every rank of a gloo world, each in its namespace of a fresh network and on a
    core of its own (round robin over the cores this script may use); the network goes afterwards."""
    try:
        names = make_network(workers, mbit, args.delay_ms)
        cores = sorted(os.sched_getaffinity(0))
        procs = []
        for k, ns in enumerate(names):
            env = {**os.environ, "RANK": str(k), "WORLD_SIZE": str(workers), "LOCAL_RANK": str(k),
                   "MASTER_ADDR": f"{SUBNET}.1", "MASTER_PORT": str(PORT), "OMP_NUM_THREADS": "1",
                   "GLOO_SOCKET_IFNAME": "eth0",  # gloo would pick the host name's address, unknown in here
                   "PYTHONPATH": str(ROOT / "src")}
            cmd = ["ip", "netns", "exec", ns, "taskset", "-c", str(cores[k % len(cores)]), sys.executable, *argv]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            bad = next(e for p, e in zip(procs, errors) if p.returncode)
            raise RuntimeError(f"{what} failed: {bad.strip().splitlines()[-1:]}")
    finally:
        cleanup()


def load_run(out: Path) -> dict:
    run = read_run(out)
    return {"summary": json.loads((out / "summary.json").read_text()), "rows": run.rows, "run": run}


def run(algo: str, workers: int, mbit: float | None, args, out: Path, flags: tuple[str, ...] = ()) -> dict:
    """One whole training run, each rank in its namespace on a core of its own; its summary and rows.
    ``flags``: this run's own (``--to-target``: ``--stop-at``; ``--resist-flags``). A finished run of the
    same configuration in ``out`` is reused (``--reuse``)."""
    flags = (*flags, *(args.resist_flags.split() if algo == "resist" and args.resist_flags else ()))
    record = json.dumps([algo, workers, mbit, args.preset, args.seed, args.max_rounds, args.delay_ms, args.extra,
                         *([list(flags)] if flags else [])])
    if args.reuse and (out / "summary.json").is_file() and (out / "run.txt").is_file() \
            and (out / "run.txt").read_text() == record:
        print(f"[rate_limited] reusing {out}", flush=True)
        return load_run(out)
    launch(workers, mbit, args, f"{algo} on {workers} ranks at {mbit} Mbit/s", [
        "-m", "resist.cli", "train", args.preset, "--algo", algo, "--workers", str(workers), "--runtime", "dist",
        "--backend", "gloo", "--data-dir", args.data_dir, "--out", str(out), "--force", "--seed", str(args.seed),
        "--timeout", "1800", *(["--max-rounds", str(args.max_rounds)] if args.max_rounds else []), *flags, *args.extra])
    (out / "run.txt").write_text(record)
    (out / "library.txt").write_text(common.describe_library(common.library_state()) + "\n")
    return load_run(out)


def probe_rank(out: str, nbytes: int, reps: int) -> None:
    """One rank of the link probe (run inside its namespace): the seconds of ``reps`` all-reduces of
    ``nbytes`` and of 20 one-value all-reduces, after a one-value warm-up (TCP starts each transfer
    afresh, as a round does); rank 0 writes them to ``out``."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=900))
    big, small = torch.zeros(max(1, nbytes // 4)), torch.zeros(1)
    dist.all_reduce(small)  # warm-up: the connections
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(big)
    t_big = (time.perf_counter() - t0) / reps
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(small)
    t_small = (time.perf_counter() - t0) / 20
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"t_big_s": t_big, "t_small_s": t_small, "bytes": big.numel() * 4}))
    dist.destroy_process_group()


def probe(workers: int, mbit: float | None, args, out: Path, nbytes: int) -> dict:
    """The link as the projection counts it: goodput = the bytes a ring all-reduce moves per rank
    (2 (W-1)/W of the tensor, the communicator's own count) over its measured time, and latency = a
    one-value all-reduce's time over its 2 (W-1) sequential messages (used from the unlimited link).
    Nominal htb rates overstate what gloo gets through them (Ethernet/IP/TCP headers, the ACKs queued behind data on the same egress,
    TCP's window against the rate limit), and by how much depends on the transfer's size: the probe
    all-reduces ``nbytes``, one local-SGD round's model, and this is what the calibrated projection uses."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.reuse and out.is_file() and json.loads(out.read_text())["bytes"] == max(1, nbytes // 4) * 4:
        print(f"[rate_limited] reusing the probe {out}", flush=True)
        return _link(workers, json.loads(out.read_text()))
    launch(workers, mbit, args, f"link probe on {workers} ranks at {mbit} Mbit/s", [
        str(ROOT / "experiments" / "run.py"), "rate_limited", "--probe-rank", str(out), "--probe-bytes", str(nbytes)])
    return _link(workers, json.loads(out.read_text()))


def _link(workers: int, got: dict) -> dict:
    moved = 2 * (workers - 1) / workers * got["bytes"]
    return {"goodput_mbit": moved * 8 / got["t_big_s"] / 1e6, "latency_us": got["t_small_s"] / (2 * (workers - 1)) * 1e6,
            "probe_bytes": got["bytes"]}


def per_round(rows: list[dict]) -> tuple[float, float, float]:
    """Mean per-round compute seconds, wall seconds (compute + synchronization) and link bytes."""
    from resist.analysis.projection import round_bytes

    n = len(rows)
    return (sum(r["compute_s"] for r in rows) / n, sum(r["compute_s"] + r["comm_s"] for r in rows) / n,
            sum(round_bytes(rows)) / n)


def plot(results: list[dict], path: Path, cores: int) -> None:
    """Per-round wall time against the link rate: measured (points), projected at the nominal rate
    (dotted) and calibrated (dashed), one colour per algorithm, one panel per worker count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({r["workers"] for r in results})
    fig, axes = plt.subplots(1, len(counts), figsize=(6 * len(counts), 4.2), squeeze=False)
    for ax, w in zip(axes[0], counts):
        for k, algo in enumerate(ALGOS):
            rows = sorted((r for r in results if r["workers"] == w and r["algo"] == algo), key=lambda r: r["mbit"])
            if not rows:
                continue
            colour = f"C{k}"
            done = [r for r in rows if not r.get("skipped")]
            ax.plot([r["mbit"] for r in done], [r["measured_s"] / r["rounds"] for r in done], "o", color=colour,
                    label=f"{algo} measured")
            rounds = done[0]["rounds"] if done else 1  # the same schedule at every rate
            ax.plot([r["mbit"] for r in rows], [r["projected_s"] / rounds for r in rows], ":x", color=colour,
                    label=f"{algo} projected (nominal rate)")
            ax.plot([r["mbit"] for r in rows], [r["calibrated_s"] / rounds for r in rows], "--+", color=colour,
                    label=f"{algo} projected (probed link)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link rate per rank (Mbit/s, htb)")
        ax.set_ylabel("seconds per round")
        ax.set_title(f"{w} workers on {cores} core{'s' if cores > 1 else ''}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_plots(args, measured: list[dict]) -> list[str]:
    """--to-target: `resist plot` of each link's runs (accuracy against time and bytes over the link, both
    targets drawn); the links' markdown links."""
    from resist.analysis.plot import plot_runs
    from resist.analysis.target import Target

    links = []
    for w, ratio in sorted({(r["workers"], r["ratio"]) for r in measured}):
        rows = [r for r in measured if (r["workers"], r["ratio"]) == (w, ratio)]
        runs = [read_run(Path(args.runs) / f"{r['algo']}_w{w}_r{ratio:g}") for r in rows]
        name = f"{args.name}_w{w}_r{ratio:g}.png"
        plot_runs(runs, [r["algo"] for r in rows], common.RESULTS / name,
                  targets=[Target("local SGD final - 0.5" if args.target is None else "--target", rows[0]["target"]),
                           Target("equal accuracy", rows[0]["lowest_best"])])
        links.append(f"[{name}]({name})")
    return links


def add_arguments(ap) -> None:
    options(ap, preset="cifar10_cpu", workers=[2],
            ratios=([0.1, 1.0, 10.0], "local SGD's communication / compute per round to set the link rate for"),
            delay_ms=(0.0, "one-way delay added per packet (netem; needs the kernel's sch_netem)"),
            max_rounds=(int, "cut each run short (a quick look)"), seed=0, name="rate_limited",
            algos=(list(ALGOS), None, ALGOS),
            budget_s=(float, "skip a rate-limited run (not local SGD's, the reference) whose calibrated projection "
                             "exceeds this many seconds (the table says so)"),
            reuse=(False, "reuse finished runs of the same configuration and link probes of the same size in --runs"),
            to_target=(False, "train to a target instead of a fixed schedule: local SGD trains its schedule over each "
                              "link, and every other algorithm stops at the target (--stop-at): local SGD's final "
                              "score less the task's tolerance (0.5 point of accuracy), or --target"),
            target=(float, "the target score of --to-target (default: local SGD's final less the tolerance)"),
            resist_flags=(None, "flags of ResIST's runs only, as one string (e.g. part 3's recipe over "
                                "cifar10_cpu_long: '--outer-lr 1.0 --outer-momentum 0.5 --warmup-epochs 1 "
                                "--no-outer-blocks')"))
    ap.add_argument("--probe-rank", default=None, help=argparse.SUPPRESS)  # internal: one rank of the link probe
    ap.add_argument("--probe-bytes", type=int, default=0, help=argparse.SUPPRESS)


def specs(args) -> list[Spec]:
    """The runs, unlimited links first (they set the rates), each on ``--workers`` gloo ranks."""
    return [Spec(f"{algo}_w{w}_{'unlimited' if ratio is None else f'r{ratio:g}'}", args.preset,
                 ["--algo", algo, "--workers", str(w), "--runtime", "dist", "--backend", "gloo"], algo)
            for w in args.workers for ratio in (None, *args.ratios) for algo in ALGOS if algo in args.algos]


def execute(args, specs: list[Spec]) -> list[dict] | None:
    """The runs over links of each ratio (not one ``resist train`` each: every rank in a namespace)."""
    if args.probe_rank:
        probe_rank(args.probe_rank, args.probe_bytes, reps=1)
        return None
    if "local_sgd" not in args.algos:
        raise SystemExit("rate_limited: local_sgd sets the link rates and the target; keep it in --algos")
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("rate_limited: needs root and iproute2 (ip, tc) to make network namespaces; nothing was run")
        return None
    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (cleanup(), sys.exit(130)))
    from resist.analysis.projection import compare, project_run
    from resist.analysis.target import default_targets

    runs_dir, results = Path(args.runs), []
    for w in args.workers:
        # Unlimited links first: they calibrate the rates and are what the projection starts from.
        algos = [a for a in ALGOS if a in args.algos]
        free = {algo: run(algo, w, None, args, runs_dir / f"{algo}_w{w}_unlimited") for algo in algos}
        compute, _, nbytes = per_round(free["local_sgd"]["rows"])
        # Software latency per message (gloo, TCP, the veth pair) from the unlimited link: under a rate
        # limit a lone small message also waits for htb's scheduling, which bulk transfers amortize and
        # the probed goodput already holds; charging it per message as well would count it twice.
        model_bytes = int(nbytes / (2 * (w - 1) / w))  # what one local-SGD round all-reduces
        latency_us = probe(w, None, args, runs_dir / f"probe_w{w}_unlimited.json", model_bytes)["latency_us"] \
            + args.delay_ms * 1e3
        for ratio in args.ratios:
            mbit = round(nbytes * 8 / (ratio * compute) / 1e6, 3)
            projected = dict(zip(algos, compare([project_run(free[a]["rows"], a, [mbit / 1e3], args.delay_ms * 1e3, a)
                                                 for a in algos])))
            link = probe(w, mbit, args, runs_dir / f"probe_w{w}_r{ratio:g}.json", model_bytes)
            good = link["goodput_mbit"] / 1e3
            link["latency_us"] = latency_us
            print(f"[rate_limited] w{w} {mbit} Mbit/s link: {link}", flush=True)
            calibrated = dict(zip(algos, compare([project_run(free[a]["rows"], a, [good], latency_us, a)
                                                  for a in algos])))
            group = {}
            for algo in algos:
                guess = calibrated[algo].projected_s[good]
                if args.budget_s is not None and guess > args.budget_s and algo != "local_sgd":  # the reference always runs
                    print(f"[rate_limited] {algo} w{w} {mbit} Mbit/s skipped: projected {guess:.0f} s", flush=True)
                    results.append({"workers": w, "ratio": ratio, "mbit": mbit, "algo": algo, "skipped": True,
                                    "projected_s": projected[algo].projected_s[mbit / 1e3], "calibrated_s": guess,
                                    **link})
                    continue
                stop = ("--stop-at", f"{target_of(args, group['local_sgd']):.4f}") \
                    if args.to_target and algo != "local_sgd" else ()
                group[algo] = run(algo, w, mbit, args, runs_dir / f"{algo}_w{w}_r{ratio:g}", stop)
                print(f"[rate_limited] {algo} w{w} {mbit} Mbit/s: {per_round(group[algo]['rows'])}", flush=True)
            # The link again after the runs: at the lowest rates its goodput moves from one probe to the
            # next, so the projection uses the mean of the two and the table shows both.
            after = probe(w, mbit, args, runs_dir / f"probe_w{w}_r{ratio:g}_after.json", model_bytes)
            link["goodput_after_mbit"] = after["goodput_mbit"]
            good = (link["goodput_mbit"] + after["goodput_mbit"]) / 2 / 1e3
            calibrated = dict(zip(algos, compare([project_run(free[a]["rows"], a, [good], latency_us, a)
                                                  for a in algos])))
            for r in results:
                if r.get("skipped") and (r["workers"], r["ratio"]) == (w, ratio):
                    r["goodput_after_mbit"], r["calibrated_s"] = after["goodput_mbit"], calibrated[r["algo"]].projected_s[good]
            target = target_of(args, group["local_sgd"]) if args.to_target \
                else group["local_sgd"]["summary"]["best_acc"] - 1.0
            # Equal accuracy as the other tables define it: the lower of the link runs' best scores
            # (a ResIST run that misses local SGD's final - 0.5 still has a ratio there).
            lowest = default_targets([group[a]["run"] for a in group])[0].value if args.to_target else None
            for algo in group:
                proj = projected[algo]
                c, wall, b = per_round(group[algo]["rows"])
                if args.to_target:  # a run stopped at the target is projected over the rounds it ran
                    n = len(group[algo]["rows"])
                    proj = project_run(free[algo]["rows"][:n], algo, [mbit / 1e3], args.delay_ms * 1e3, algo)
                    calibrated[algo] = project_run(free[algo]["rows"][:n], algo, [good], latency_us, algo)
                lib = runs_dir / f"{algo}_w{w}_r{ratio:g}" / "library.txt"
                results.append({"workers": w, "ratio": ratio, "mbit": mbit, "algo": algo,
                                "library": lib.read_text().strip() if lib.is_file() else None,
                                "compute_per_round_s": c, "wall_per_round_s": wall, "bytes_per_round": b,
                                "measured_s": group[algo]["summary"]["time_s"],
                                "projected_s": proj.projected_s[mbit / 1e3],
                                "calibrated_s": calibrated[algo].projected_s[good], **link,
                                "rounds": len(group[algo]["rows"]),
                                "best_acc": group[algo]["summary"]["best_acc"], "target": target,
                                "time_to_target_s": reach(group[algo]["run"], target),
                                **({**to_target(group[algo], free[algo], target, good, latency_us),
                                    "lowest_best": lowest, "reached_lowest": to_target(
                                        group[algo], free[algo], lowest, good, latency_us)["reached"]}
                                   if args.to_target else {})})
    return results


def target_of(args, lsgd: dict) -> float:
    """--to-target's target: --target, else local SGD's final score less the task's tolerance."""
    from resist.analysis.target import TOLERANCE

    if args.target is not None:
        return args.target
    run = lsgd["run"]
    final = run.evaluated[-1][run.headline.key]
    return final - TOLERANCE[run.task] if run.headline.higher_is_better else final + TOLERANCE[run.task]


def to_target(got: dict, free: dict, target: float, gbit: float, latency_us: float) -> dict:
    """Where a run over the link first reached ``target``: its round, parallel-equivalent and wall seconds,
    bytes per worker, and the calibrated projection of its unlimited-link twin over the same rounds."""
    from resist.analysis.projection import project_run
    from resist.analysis.target import time_to

    at = time_to(got["run"], target)
    if at is None:
        return {"reached": None}
    algo = got["summary"]["algo"]
    projected = project_run(free["rows"][:at.round + 1], algo, [gbit], latency_us, algo).projected_s[gbit]
    return {"reached": {"round": at.round + 1, "time_s": at.time_s, "wall_s": at.wall_s,
                        "sent_mb": at.sent_bytes / 1e6, "calibrated_s": projected}}


def tabulate(args, results: list[dict], env: dict) -> None:
    env["cores_used"] = len(os.sched_getaffinity(0))
    lines = [f"# MEASURED over rate-limited links ({args.name})\n",
             f"{env['cores_used']} cores. Each rank in its own network namespace, "
             f"{'one core each' if env['cores_used'] >= max(args.workers) else 'the ranks sharing those cores round robin'}, "
             "htb egress limit. Projected = `resist project` of the same run on unlimited links (its "
             "compute, bytes and messages) at the nominal rate with the netem delay per message; calibrated = "
             "the same projection at the link's probed goodput (the mean of a gloo all-reduce of one local-SGD "
             "round's model timed through that link before and after the runs, bytes counted as the communicator counts them; the latency "
             "is a one-value all-reduce's per message on the unlimited link plus the netem delay). The "
             "error columns say how far each projection is from the measurement. Data parallel's link time is "
             "projected to overlap its backward pass (`resist.analysis.projection`, FORWARD_SHARE).\n",
             "| workers | link (Mbit/s) | probed goodput before / after (Mbit/s) | latency (us) | comm/compute target | "
             "algorithm | wall / round (s) | measured run (s) | projected (s) | error | calibrated (s) | error | "
             "best acc (%) | time to target (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        link = (f"| {r['workers']} | {r['mbit']:g} | {r['goodput_mbit']:.3f} / {r['goodput_after_mbit']:.3f} | "
                f"{r['latency_us']:.0f} | {r['ratio']:g}x | {r['algo']} |")
        if r.get("skipped"):
            lines.append(f"{link} not run: calibrated projection {r['calibrated_s']:.0f} s, over --budget-s | | "
                         f"{r['projected_s']:.1f} | | {r['calibrated_s']:.1f} | | | |")
            continue
        err = (r["projected_s"] - r["measured_s"]) / r["measured_s"]
        cal = (r["calibrated_s"] - r["measured_s"]) / r["measured_s"]
        ttt = f"{r['time_to_target_s']:.1f}" if r["time_to_target_s"] is not None else "not reached"
        lines.append(f"{link} {r['wall_per_round_s']:.2f} | {r['measured_s']:.1f} | {r['projected_s']:.1f} | {err:+.1%} | "
                     f"{r['calibrated_s']:.1f} | {cal:+.1%} | {r['best_acc']:.2f} | {ttt} |")
    measured = [r for r in results if not r.get("skipped")]
    if measured:
        worst = max(measured, key=lambda r: abs(r["calibrated_s"] / r["measured_s"] - 1))
        lines += ["", f"Largest calibrated-projection error: {worst['calibrated_s'] / worst['measured_s'] - 1:+.1%} "
                  f"({worst['algo']}, {worst['workers']} workers, {worst['mbit']:g} Mbit/s)."]
        speed = []
        for w in sorted({r["workers"] for r in measured}):
            for ratio in sorted({r["ratio"] for r in measured if r["workers"] == w}):
                got = {r["algo"]: r for r in measured if (r["workers"], r["ratio"]) == (w, ratio)}
                if "resist" in got and "local_sgd" in got:
                    speed.append(f"{w} workers at {got['resist']['mbit']:g} Mbit/s ({ratio:g}x): "
                                 f"{got['local_sgd']['wall_per_round_s'] / got['resist']['wall_per_round_s']:.2f}x")
        if speed:
            lines += ["", "ResIST's measured speed-up per round over local SGD (paper Table 4: 3.60x at 4 workers, "
                      "full width on a real cluster): " + "; ".join(speed) + "."]
    if args.to_target:
        lines += to_target_lines(args, measured)
    trained = sorted({r["library"] for r in measured if r.get("library")})
    if trained:  # --reuse: the runs may be older than the library that wrote this table
        lines += ["", f"Runs trained by library {', '.join(trained)} (run folders' library.txt under {args.runs})."]
    lines += ["", f"Plot: [{args.name}.png]({args.name}.png)"]
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, common.RESULTS / f"{args.name}.png", env["cores_used"])
    if args.to_target:
        lines += [f"Accuracy over the link against time and bytes: {', '.join(accuracy_plots(args, measured))}"]
    record(args.name, {"args": vars(args), "rows": results}, lines, "sudo " + args.command, env)


def to_target_lines(args, measured: list[dict]) -> list[str]:
    """--to-target's tables: each run over the link to the common target (local SGD's final - 0.5, or
    --target), and to the lower of the runs' best scores (equal accuracy), against local SGD's."""
    out = ["", "## To the target\n",
           f"Targets: {'--target' if args.target is not None else 'local SGD final - 0.5 point'} per link (every "
           f"algorithm but local SGD stopped there, `--stop-at`), and the lower of the link runs' best scores "
           f"(equal accuracy; a run stopped at the first target has that as its best). Time = parallel-equivalent "
           f"seconds over the link (compute + synchronization, no evaluation); wall = seconds since the run began, "
           f"evaluations included (ResIST's also gather the whole model onto rank 0 over the link each time, "
           f"since no rank holds it); calibrated = the unlimited-link run's rounds up to the same one, projected at "
           f"the probed goodput. Ratios: local SGD's / this run's (>1: this run got there sooner or with fewer "
           f"bytes).\n",
           "| workers | link (Mbit/s) | algorithm | target | target (%) | reached at round | time (s) | wall (s) "
           "| calibrated (s) | MB sent per worker | time ratio | wall ratio | bytes ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, key, value in (("local SGD final - 0.5" if args.target is None else "--target", "reached", "target"),
                             ("equal accuracy", "reached_lowest", "lowest_best")):
        for r in measured:
            got = r.get(key)
            lsgd = next((x for x in measured
                         if (x["workers"], x["ratio"], x["algo"]) == (r["workers"], r["ratio"], "local_sgd")), {}).get(key)
            head = f"| {r['workers']} | {r['mbit']:g} | {r['algo']} | {name} | {r[value]:.2f} |"
            if got is None:
                out.append(f"{head} not reached in {r['rounds']} rounds | | | | | | | |")
                continue
            if lsgd:
                wall_ratio = f"{lsgd['wall_s'] / got['wall_s']:.2f}x" if lsgd["wall_s"] and got["wall_s"] else "-"
                ratio = f"{lsgd['time_s'] / got['time_s']:.2f}x | {wall_ratio} | {lsgd['sent_mb'] / got['sent_mb']:.2f}x"
            else:
                ratio = "- | - | -"
            wall = "-" if got["wall_s"] is None else f"{got['wall_s']:.1f}"
            out.append(f"{head} {got['round']} | {got['time_s']:.1f} | {wall} | {got['calibrated_s']:.1f} | "
                       f"{got['sent_mb']:.2f} | {ratio} |")
    return out
