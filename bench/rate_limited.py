"""MEASURED, not projected: ResIST, local SGD and data parallel between real processes over rate-limited
links, beside what ``resist project`` predicts for the same links.

Each gloo rank runs in a network namespace of its own, joined by a veth pair to a bridge that lives in
one more namespace, with an htb rate limit on every rank's egress (and a fixed netem delay): nothing is
added to the host's own network, and only addresses inside the namespaces made here are used
(10.77.0.0/24). Every namespace (and with it every link) is removed on exit, also on Ctrl-C and errors.
It needs root (``ip netns``, ``tc``); without it, it says so and exits.

Link rates are chosen per worker count so that local SGD's communication per round is about 0.1x, 1x
and 10x its compute per round (from a calibration run on unlimited links): the compute/communication
ratios that the full-width paper ResNet101 on an H100 has at about 100, 10 and 1 Gbit/s (see
docs/results/paper_scale_projection.md). Each run is a whole ``resist train`` on real CIFAR-10, one core
per rank; per-round wall time and time to a common target accuracy come from its metrics.jsonl.

    sudo python bench/rate_limited.py --data-dir ../shared/data/cifar10 --workers 2 --ratios 0.1 1 10
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
from datetime import datetime, timezone
from pathlib import Path

from benchutil import OUT, ROOT, describe_library, library_state

PREFIX = f"rs{os.getpid() % 100000}"
SUBNET = "10.77.0"
PORT = 29577
ALGOS = ("local_sgd", "resist", "data_parallel")
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


def run(algo: str, workers: int, mbit: float | None, args, out: Path) -> dict:
    """One whole training run, each rank in its namespace on a core of its own; its summary and rows."""
    try:
        names = make_network(workers, mbit, args.delay_ms)
        cores = os.sched_getaffinity(0)
        procs = []
        for k, ns in enumerate(names):
            env = {**os.environ, "RANK": str(k), "WORLD_SIZE": str(workers), "LOCAL_RANK": str(k),
                   "MASTER_ADDR": f"{SUBNET}.1", "MASTER_PORT": str(PORT), "OMP_NUM_THREADS": "1",
                   "GLOO_SOCKET_IFNAME": "eth0",  # gloo would pick the host name's address, unknown in here
                   "PYTHONPATH": str(ROOT / "src")}
            core = sorted(cores)[k % len(cores)]
            cmd = ["ip", "netns", "exec", ns, "taskset", "-c", str(core), sys.executable, "-m", "resist.cli", "train",
                   args.preset, "--algo", algo, "--workers", str(workers), "--runtime", "dist", "--backend", "gloo",
                   "--data-dir", args.data_dir, "--out", str(out), "--seed", str(args.seed), "--timeout", "1800",
                   *(["--max-rounds", str(args.max_rounds)] if args.max_rounds else []), *args.extra]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            bad = next(e for p, e in zip(procs, errors) if p.returncode)
            raise RuntimeError(f"{algo} on {workers} ranks at {mbit} Mbit/s failed: {bad.strip().splitlines()[-1:]}")
    finally:
        cleanup()
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"summary": summary, "rows": rows}


def per_round(rows: list[dict]) -> tuple[float, float, float]:
    """Mean per-round compute seconds, wall seconds (compute + synchronization) and link bytes."""
    from resist.analysis.projection import round_bytes

    n = len(rows)
    return (sum(r["compute_s"] for r in rows) / n, sum(r["compute_s"] + r["comm_s"] for r in rows) / n,
            sum(round_bytes(rows)) / n)


def time_to(rows: list[dict], target: float) -> float | None:
    return next((r["time_s"] for r in rows if r.get("test_acc") is not None and r["test_acc"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"))
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 1.0, 10.0],
                    help="local SGD's communication / compute per round to set the link rate for")
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="one-way delay added per packet (netem; needs the kernel's sch_netem)")
    ap.add_argument("--max-rounds", type=int, default=None, help="cut each run short (a quick look)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/rate_limited")
    ap.add_argument("--name", default="rate_limited")
    ap.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip a rate-limited run whose projection exceeds this many seconds (say so in the table)")
    ap.add_argument("extra", nargs="*", help="more `resist train` flags for every run, after --")
    args = ap.parse_args()
    if "local_sgd" not in args.algos:
        raise SystemExit("rate_limited: local_sgd sets the link rates and the target; keep it in --algos")
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        print("rate_limited: needs root and iproute2 (ip, tc) to make network namespaces; nothing was run")
        return
    if not Path(args.data_dir).is_dir() and args.preset != "smoke":
        raise SystemExit(f"rate_limited: data folder {args.data_dir} does not exist; pass --data-dir")
    atexit.register(cleanup)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (cleanup(), sys.exit(130)))
    from resist.analysis.projection import compare, project_run

    start = library_state()
    runs_dir, results = Path(args.runs), []
    for w in args.workers:
        # Unlimited links first: they calibrate the rates and are what the projection starts from.
        algos = [a for a in ALGOS if a in args.algos]
        free = {algo: run(algo, w, None, args, runs_dir / f"{algo}_w{w}_unlimited") for algo in algos}
        compute, _, nbytes = per_round(free["local_sgd"]["rows"])
        for ratio in args.ratios:
            mbit = round(nbytes * 8 / (ratio * compute) / 1e6, 3)
            projected = dict(zip(algos, compare([project_run(free[a]["rows"], a, [mbit / 1e3], args.delay_ms * 1e3, a)
                                                 for a in algos])))
            group = {}
            for algo in algos:
                guess = projected[algo].projected_s[mbit / 1e3]
                if args.budget_s is not None and guess > args.budget_s:
                    print(f"[rate_limited] {algo} w{w} {mbit} Mbit/s skipped: projected {guess:.0f} s", flush=True)
                    results.append({"workers": w, "ratio": ratio, "mbit": mbit, "algo": algo, "skipped": True,
                                    "projected_s": guess})
                    continue
                group[algo] = run(algo, w, mbit, args, runs_dir / f"{algo}_w{w}_r{ratio:g}")
                print(f"[rate_limited] {algo} w{w} {mbit} Mbit/s: {per_round(group[algo]['rows'])}", flush=True)
            target = group["local_sgd"]["summary"]["best_acc"] - 1.0
            for algo in group:
                proj = projected[algo]
                c, wall, b = per_round(group[algo]["rows"])
                results.append({"workers": w, "ratio": ratio, "mbit": mbit, "algo": algo,
                                "compute_per_round_s": c, "wall_per_round_s": wall, "bytes_per_round": b,
                                "measured_s": group[algo]["summary"]["time_s"],
                                "projected_s": proj.projected_s[mbit / 1e3],
                                "best_acc": group[algo]["summary"]["best_acc"], "target": target,
                                "time_to_target_s": time_to(group[algo]["rows"], target)})
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "library": describe_library(start, library_state()), "cores": len(os.sched_getaffinity(0))}
    lines = [f"# MEASURED over rate-limited links ({args.name})\n",
             f"`sudo python bench/rate_limited.py --preset {args.preset} --workers {' '.join(map(str, args.workers))} "
             f"--ratios {' '.join(f'{r:g}' for r in args.ratios)} --delay-ms {args.delay_ms:g} --algos {' '.join(args.algos)}"
             f"{f' --max-rounds {args.max_rounds}' if args.max_rounds else ''}"
             f"{f' --budget-s {args.budget_s:g}' if args.budget_s else ''}{' -- ' + ' '.join(args.extra) if args.extra else ''}` ({env['date']}, "
             f"library {env['library']}, {env['cores']} cores). Each rank in its own network namespace, one core "
             "each, htb egress limit. Projected = `resist project` of the same run on unlimited links (its "
             "compute and bytes) at that rate; the projection is wrong by the error column.\n",
             "| workers | link (Mbit/s) | comm/compute target | algorithm | wall / round (s) | measured run (s) | "
             "projected run (s) | projection error | best acc (%) | time to target (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['workers']} | {r['mbit']:g} | {r['ratio']:g}x | {r['algo']} | not run: projected "
                         f"{r['projected_s']:.0f} s, over --budget-s | | {r['projected_s']:.1f} | | | |")
            continue
        err = (r["projected_s"] - r["measured_s"]) / r["measured_s"]
        ttt = f"{r['time_to_target_s']:.1f}" if r["time_to_target_s"] is not None else "not reached"
        lines.append(f"| {r['workers']} | {r['mbit']:g} | {r['ratio']:g}x | {r['algo']} | {r['wall_per_round_s']:.2f} | "
                     f"{r['measured_s']:.1f} | {r['projected_s']:.1f} | {err:+.1%} | {r['best_acc']:.2f} | {ttt} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "env": env, "rows": results}, indent=2))
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
