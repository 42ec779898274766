"""Elastic training under fire (issue 22): a worker SIGKILLed about every ``--kill-every`` rounds and
started again ``--restart-after`` seconds later, for a whole run, with no checkpoint read; beside
failure-free runs of the same config and a restart-from-checkpoint baseline under the same kills.

Runs (real CIFAR-10, paper ResNet101 at 1/8 width, ``--workers`` workers, ``--local-iters`` local steps,
``--epochs`` epochs; each worker a process on the cores this suite is pinned to, the lighthouse in the
suite's process):

- ``soak_{resist,lsgd}_sS``: ``--runtime elastic`` (local SGD for ``--lsgd-epochs`` only: its bytes per
  event, for comparison); every ``--kill-every`` rounds (counted in
  metrics.jsonl's rows) plus a random 0-4 s, a random member is killed (SIGKILL, no clean exit) and its
  replacement (same name, a new process) is started ``--restart-after`` s later; it joins at the next round
  boundary after its process is up. The kill times go to ``soak.json`` in the run folder.
- ``clean_resist_sS``: the same config, no kills (the failure-free spread).
- ``restart_resist_sS``: the non-elastic ``--runtime dist`` with a checkpoint every round; the same kills end
  the job (a lost rank fails it), and it is resumed from its latest checkpoint ``--restart-after`` s later.

    OMP_NUM_THREADS=1 taskset -c 0 python experiments/run.py elastic --data-dir ../shared/data/cifar10

Per event (from the run's metrics.jsonl and soak.json): detection = when the first quorum without the
killed worker formed minus the kill time (wall clock; a worker killed during its local steps is noticed
at the round's end, by design: membership changes between rounds), rounds of the lost worker's blocks
lost, bytes sent to restore them, bytes a joiner received. Goal: detection + the recovering
synchronization within 1 s plus one round.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import common
from common import Spec, copy_runs, record, spread, table

PRESET = "cifar10_cpu"
RUNS = "runs/elastic"
TABULATE_ONLY = False


def add_arguments(ap) -> None:
    common.options(ap, seeds=([0, 1], "seeds of the failure-free runs (the soak and restart runs use the first)"),
                   epochs=(8.0, "epochs of every ResIST run"),
                   lsgd_epochs=(2.0, "epochs of the local SGD soak (its recovery bytes per event, for comparison)"),
                   workers=(4, "workers"), local_iters=(5, "local steps per round"),
                   kill_every=(5, "rounds between kills"), restart_after=(3.0, "seconds from a kill to its restart"),
                   eval_every=(20, "rounds between evaluations"))


def flags(args, algo: str, seed: int, runtime: str) -> list[str]:
    epochs = args.lsgd_epochs if algo == "local_sgd" else args.epochs
    return ["--algo", algo, "--workers", str(args.workers), "--seed", str(seed), "--epochs", f"{epochs:g}",
            "--local-iters", str(args.local_iters), "--eval-every", str(args.eval_every), "--runtime", runtime]


def specs(args) -> list[Spec]:
    s0 = args.seeds[0]
    out = [Spec(f"soak_resist_s{s0}", PRESET, flags(args, "resist", s0, "elastic"), "ResIST, kills", "soak"),
           Spec(f"soak_lsgd_s{s0}", PRESET, flags(args, "local_sgd", s0, "elastic"), "local SGD, kills", "soak")]
    out += [Spec(f"clean_resist_s{s}", PRESET, flags(args, "resist", s, "elastic"), "ResIST, no kills", "clean")
            for s in args.seeds]
    out.append(Spec(f"restart_resist_s{s0}", PRESET, [*flags(args, "resist", s0, "dist"), "--checkpoint-every", "1"],
                    "ResIST, kills, restart from checkpoint", "restart"))
    return out


def execute(args, specs: list[Spec]) -> list[dict]:
    results = []
    for spec in specs:
        out = args.runs / spec.name
        if spec.suite == "clean":
            out = common.launch(spec, args.runs, args.data_dir, args.extra)
        elif not (out / "soak.json").is_file():
            (soak if spec.suite == "soak" else restart)(args, spec, out)
        r = common.collect(spec, out)
        r["soak"] = json.loads((out / "soak.json").read_text()) if (out / "soak.json").is_file() else None
        results.append(r)
    return results


def rows_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def soak(args, spec: Spec, out: Path) -> None:
    """An elastic run with kills and restarts, driven from here (the launcher is a library object)."""
    sys.path.insert(0, str(common.ROOT / "src"))
    from resist.cli import build_config, make_parser
    from resist.io import atomic_write_json
    from resist.train.elastic_launch import ElasticLauncher
    from resist.train.runfolder import prepare_run_dir

    argv = common.train_args(spec, args.runs, args.data_dir, args.extra)
    cfg = build_config(make_parser().parse_args(argv))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    prepare_run_dir(cfg, resuming=False, classes=None)
    rng = random.Random(cfg.run.seed)
    launcher = ElasticLauncher(cfg, out)
    kills, t0 = [], time.perf_counter()
    try:
        for i in range(cfg.algo.workers):
            launcher.start(f"w{i}")
        next_kill = args.kill_every
        while launcher.alive():
            rows = rows_of(out)
            # No kill in the last quarter epoch: the final assembly is a collective of the last quorum.
            if rows and len(rows) >= next_kill and not launcher.outcomes and rows[-1]["epoch"] < cfg.optim.epochs - 0.25:
                time.sleep(rng.uniform(0, 4))  # anywhere in the round: local steps, quorum or synchronization
                members = [m for m in rows_of(out)[-1]["members"] if m in launcher.alive()]
                if len(members) >= 2:
                    name = rng.choice(members)
                    at = launcher.kill(name)
                    kills.append({"worker": name, "killed_at": at, "after_round": rows_of(out)[-1]["round"]})
                    threading.Timer(args.restart_after, restart_worker, args=(launcher, name)).start()
                next_kill = len(rows_of(out)) + args.kill_every
            launcher.collect()
            time.sleep(0.2)
        summary = launcher.wait(timeout=60)
    finally:
        launcher.close()
    wall = time.perf_counter() - t0
    cmd = "resist " + " ".join(argv) + f"  # killed every {args.kill_every} rounds, restarted after {args.restart_after:g} s"
    atomic_write_json(summary, out / "summary.json")
    (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
    (out / "command.txt").write_text(cmd)
    (out / "library.txt").write_text(common.describe_library(common.library_state()) + "\n")
    atomic_write_json({"kills": kills, "restart_after_s": args.restart_after, "kill_every": args.kill_every,
                       "wall_s": wall}, out / "soak.json")


def restart_worker(launcher, name: str) -> None:
    if not launcher.outcomes and launcher.alive():  # not after the run has ended
        launcher.start(name)


def restart(args, spec: Spec, out: Path) -> None:
    """The non-elastic baseline: the same kill schedule ends the job, resumed from its last checkpoint."""
    argv = common.train_args(spec, args.runs, args.data_dir, args.extra)
    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    rng = random.Random(int(spec.name.rsplit("_s", 1)[1]))
    kills, t0, first = [], time.perf_counter(), True
    if out.exists():
        import shutil

        shutil.rmtree(out)
    next_kill = args.kill_every
    while not (out / "summary.json").is_file():
        cmd = [sys.executable, "-m", "resist.cli", *argv] if first else \
            [sys.executable, "-m", "resist.cli", "train", "--resume", str(out)]
        first = False
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            rows = rows_of(out)
            if rows and len(rows) >= next_kill:
                time.sleep(rng.uniform(0, 4))
                ranks = children(proc.pid)
                if ranks and proc.poll() is None:
                    victim = rng.randrange(len(ranks))
                    at = time.time()
                    os.kill(ranks[victim], signal.SIGKILL)
                    kills.append({"worker": f"rank {victim}", "killed_at": at, "after_round": rows_of(out)[-1]["round"]})
                    proc.wait()
                    time.sleep(args.restart_after)
                next_kill = len(rows_of(out)) + args.kill_every
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    (out / "wall_s.txt").write_text(f"{wall:.1f}\n")
    (out / "command.txt").write_text("resist " + " ".join(argv) + f"  # a rank killed every {args.kill_every} "
                                     f"rounds, resumed after {args.restart_after:g} s")
    (out / "library.txt").write_text(common.describe_library(common.library_state()) + "\n")
    (out / "soak.json").write_text(json.dumps({"kills": kills, "restart_after_s": args.restart_after,
                                               "kill_every": args.kill_every, "wall_s": wall}, indent=1))


def children(pid: int) -> list[int]:
    """The rank processes of a ``--runtime dist`` launcher (its child processes, in start order)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(p) for p in text.split()]
    # The spawn start method's resource tracker is a child too; ranks run resist's worker entry.
    return [k for k in kids if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]


def events(r: dict) -> list[dict]:
    """Each kill with what the run made of it: detection, rounds lost, bytes, the joiner's bytes."""
    rows = r["rows"]
    out = []
    for k in (r["soak"] or {}).get("kills", []):
        lost = next(((row, e) for row in rows for e in row.get("events", [])
                     if e["event"] == "lost" and e["worker"] == k["worker"] and e["at"] >= k["killed_at"]), None)
        joined = next((e for row in rows for e in row.get("events", [])
                       if e["event"] == "joined" and e["worker"] == k["worker"] and e["at"] >= k["killed_at"]), None)
        if lost is None:
            continue
        row, e = lost
        detect = e["at"] - k["killed_at"]
        out.append({"worker": k["worker"], "round": e["round"], "detect_s": detect,
                    "recover_s": detect + row["comm_s"], "round_s": row["compute_s"],
                    "within_goal": detect + row["comm_s"] <= 1.0 + row["compute_s"],
                    "rounds_lost": e["rounds_lost"], "recovery_bytes": e["recovery_bytes"],
                    "join_bytes": joined["join_bytes"] if joined else None})
    return out


def backup_share(r: dict) -> float | None:
    """Backup bytes over all training bytes sent, in the rounds whose members did not change (where the
    per-worker cumulative counters give the round's bytes)."""
    rows, backup, total = r["rows"], 0, 0
    for a, b in zip(rows, rows[1:]):
        if a["members"] == b["members"] and "backup_bytes" in b:
            backup += b["backup_bytes"]
            total += sum(b["sent_bytes"]) - sum(a["sent_bytes"])
    return backup / total if total else None


def tabulate(args, results: list[dict], env: dict) -> None:
    copy_runs(results, common.RESULTS / "elastic")
    clean = [r for r in results if r["suite"] == "clean" and r["algo"] == "resist"]
    lines, raw = [], []
    for r in results:
        ev = events(r) if r["suite"] == "soak" else []
        kills = len((r["soak"] or {}).get("kills", []))
        joins = sum(e["event"] == "joined" for row in r["rows"] for e in row.get("events", []))
        extra = max(r["summary"].get("elastic_extra_bytes_per_worker") or [0])
        row = {"name": r["name"], "label": r["label"], "final_acc": r["final_acc"], "best_acc": r["best_acc"],
               "wall_s": r["wall_s"], "kills": kills, "joins": joins, "events": ev, "sent_mb": r["sent_mb"],
               "extra_bytes": extra}
        raw.append(row)
        pick = lambda k: [e[k] for e in ev if e[k] is not None]  # noqa: E731
        share = backup_share(r) if r["algo"] == "resist" and r["suite"] != "restart" else None
        row["backup_share"] = share
        lines.append([r["label"], r["seed"], f"{r['final_acc']:.2f}", f"{r['wall_s']:.0f}" if r["wall_s"] else "-",
                      kills, joins if r["suite"] != "restart" else "-",
                      f"{statistics.median(pick('detect_s')):.2f} / {max(pick('detect_s')):.2f}" if ev else "-",
                      f"{sum(e['within_goal'] for e in ev)}/{len(ev)}" if ev else "-",
                      f"{statistics.fmean(pick('rounds_lost')):.2f}" if ev else "-",
                      f"{statistics.fmean(pick('recovery_bytes')) / 1e6:.3f}" if ev else "-",
                      f"{statistics.fmean(pick('join_bytes')) / 1e6:.3f}" if pick("join_bytes") else "-",
                      f"{extra / 1e6:.2f}" if extra else "-", f"{100 * share:.1f}%" if share is not None else "-"])
    head = ["run", "seed", "final acc (%)", "wall (s)", "kills", "joins", "detection median / max (s)",
            "within 1 s + 1 round", "rounds lost per event", "restore MB per event", "join MB per event",
            "extra memory per worker (MB)", "backups, share of bytes sent"]
    spread_clean = spread([r["final_acc"] for r in clean])
    soaked = next((r for r in results if r["suite"] == "soak" and r["algo"] == "resist"), None)
    restarted = next((r for r in results if r["suite"] == "restart"), None)
    lsgd = next((r for r in results if r["suite"] == "soak" and r["algo"] == "local_sgd"), None)
    said = []
    if soaked and restarted and soaked["wall_s"] and restarted["wall_s"]:
        said.append(f"Wall time under the kill schedule: elastic {soaked['wall_s']:.0f} s, restart from checkpoint "
                    f"{restarted['wall_s']:.0f} s ({restarted['wall_s'] / soaked['wall_s']:.2f}x the elastic run's), both "
                    f"on the same core with nothing else on it.")
    if soaked and lsgd:
        mine = [e["join_bytes"] for e in events(soaked) if e["join_bytes"]]
        theirs = [e["join_bytes"] for e in events(lsgd) if e["join_bytes"]]
        if mine and theirs:
            said.append(f"Bytes a joiner receives: ResIST {statistics.fmean(mine) / 1e6:.3f} MB, local SGD "
                        f"{statistics.fmean(theirs) / 1e6:.3f} MB per event "
                        f"({statistics.fmean(mine) / statistics.fmean(theirs):.2f}x).")
    doc = [
        "# Elastic training under fire (issue 22)\n",
        f"Real CIFAR-10, paper ResNet101 at 1/8 width, {args.workers} workers (one process each, sharing the "
        f"cores named in the command), {args.local_iters} local steps a round, {args.epochs:g} epochs (local SGD: "
        f"{args.lsgd_epochs:g}, for its bytes per event); a random "
        f"member SIGKILLed about every {args.kill_every} rounds and restarted {args.restart_after:g} s later, no "
        "checkpoint read (soak); the same config with no kills (clean); the non-elastic dist runtime with a "
        "checkpoint every round, killed on the same schedule and resumed from its checkpoint (restart). "
        f"Failure-free ResIST final accuracy over {len(clean)} seed(s): {spread_clean}. Detection: wall clock "
        "from the kill to the first quorum without the worker. 'Within 1 s + 1 round': detection plus the "
        "recovering synchronization at most 1 s more than that round's local steps. Extra memory: the most a "
        "worker held at once of its post-step snapshot (to redo a synchronization a loss interrupts) plus the "
        "committed copies it keeps for others. Backups: share of all training bytes sent, over the rounds "
        "whose members did not change. Run folders: [elastic/](elastic/).\n",
        *table(head, lines), "", *said]
    record("elastic", {"rows": raw, "runs": [common.public(r) for r in results]}, doc, args.command, env)
