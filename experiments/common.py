"""What the experiments share: the library measured and the machine (`environment`), launching or reusing
or resuming a ``resist train`` run (`launch`), reading a finished one (`collect`), mean ± sd (`spread`),
time to a target and the ratios of two runs there (`reach`, `ratios`), the tables more than one suite
writes, and `record`, which writes docs/results/NAME.{json,md} with the command and the environment."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"  # where results are read from
RESULTS = Path(os.environ.get("RESIST_RESULTS", OUT))  # where `record` writes (also the runner's --results)
# The library beside these scripts is the one measured, installed or not.
sys.path.insert(0, str(ROOT / "src"))

from resist.analysis.plot import Run, read_run  # noqa: E402
from resist.analysis.target import time_to  # noqa: E402


def git(*args: str) -> str:
    """Read-only git query about the library measured (empty if git is unavailable)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def library_state() -> dict:
    """Which library is measured: the commit, the tree of src/ in it (what a later commit that leaves
    src/ alone keeps), and a fingerprint of uncommitted changes under src/."""
    diff = git("diff", "HEAD", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_tree": git("rev-parse", "HEAD:src"),
            "src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None}


def describe_library(start: dict, end: dict | None = None) -> str:
    end = end or start
    text = start["commit"][:10] or "?"
    if start["src_diff_sha1"]:
        text += f" plus uncommitted changes in src/ (diff sha1 {start['src_diff_sha1']})"
    if (end["src_tree"], end["src_diff_sha1"]) != (start["src_tree"], start["src_diff_sha1"]):
        text += " -- the library changed during the run, results may mix versions"
    return text


def environment(start: dict | None = None, **extra) -> dict:
    """The record of where and with what a result was made; ``start``: `library_state()` when it began."""
    import torch

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
            "library": describe_library(start or library_state(), library_state()),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_1min": round(os.getloadavg()[0], 2), **extra}


def command(argv: list[str] | None = None) -> str:
    """``argv`` (default: this process's; argv[0] the script) as a user would type it, with the thread count
    and the core pinning."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    words = ["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script), *argv[1:]]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < (os.cpu_count() or 1):
        words = ["taskset", "-c", ",".join(map(str, cores)), *words]
    if "OMP_NUM_THREADS" in os.environ:
        words.insert(0, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    return shlex.join(words)


def provenance(cmd: str, env: dict) -> str:
    gpu = f", {env['gpu']}" if env.get("gpu") else ""
    return (f"`{cmd}` ({env['date']}; {env['machine']}, {env['cores']} cores{gpu}, 1-minute load average "
            f"{env['load_avg_1min']:.1f} at the end; torch {env['torch']}, Python {env['python']}; library "
            f"{env['library']})")


def write(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def record(name: str, body: dict, lines: list[str], cmd: str, env: dict, md: str | None = None) -> None:
    """RESULTS/NAME.json ({command, env, **body}) and RESULTS/MD.md (MD = NAME unless given): ``lines``
    with the command and the environment under their title (``lines[0]``); prints the markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [lines[0], provenance(cmd, env) + "\n", *lines[1:]]
    write(RESULTS / f"{name}.json", json.dumps({"command": cmd, "env": env, **body}, indent=2, default=str) + "\n")
    write(RESULTS / f"{md or name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def options(ap: argparse.ArgumentParser, **named) -> argparse.ArgumentParser:
    """Options from ``name=default`` (or ``name=(default, help)`` or ``(default, help, choices)``): a list
    takes one or more values of its first item's type (an empty one: integers), False is a switch, None a
    string, a type (int, float, str) that type with no default."""
    for name, value in named.items():
        default, text, choices = (*value, None)[:3] if isinstance(value, tuple) else (value, None, None)
        flag = "--" + name.replace("_", "-")
        if default is False:
            ap.add_argument(flag, action="store_true", help=text)
        elif isinstance(default, type):
            ap.add_argument(flag, type=default, help=text, choices=choices)
        elif isinstance(default, list):
            ap.add_argument(flag, nargs="+", type=type(default[0]) if default else int, default=default, help=text,
                            choices=choices)
        else:
            ap.add_argument(flag, type=str if default is None else type(default), default=default, help=text,
                            choices=choices)
    return ap


def parser(doc: str, **named) -> argparse.ArgumentParser:
    """An argument parser with the first paragraph of ``doc`` and the `options` ``named``."""
    return options(argparse.ArgumentParser(description=doc.split("\n\n")[0]), **named)


# ---- runs of ``resist train`` ----

@dataclass
class Spec:
    """One ``resist train PRESET FLAGS --data-dir D --out RUNS/NAME TAIL`` run and the table row it feeds."""

    name: str
    preset: str
    flags: list[str]
    label: str = ""
    suite: str = "main"  # which table of the suite
    tail: list[str] = field(default_factory=list)  # flags after --out (as the run folders record them)
    env: dict[str, str] = field(default_factory=dict)  # environment of the run (RESIST_FAULTS), part of its command


_force: list[str] | None = None


def force_flag() -> list[str]:
    """``--force`` when ``resist train`` has it (a fresh run into a folder that already holds files)."""
    global _force
    if _force is None:
        help_text = subprocess.run([sys.executable, "-m", "resist.cli", "train", "--help"], capture_output=True,
                                   text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
        _force = ["--force"] if "--force" in help_text else []
    return _force


def train_args(spec: Spec, runs: Path, data_dir: str | None, extra: list[str] = ()) -> list[str]:
    """``train PRESET ...`` of ``spec`` (what its run folder records as command.txt after ``resist``)."""
    data = ["--data-dir", str(data_dir)] if data_dir and "--data-dir" not in spec.flags else []
    return ["train", spec.preset, *spec.flags, *data, "--out", str(runs / spec.name), *spec.tail, *extra]


def launch(spec: Spec, runs: Path, data_dir: str | None, extra: list[str] = ()) -> Path:
    """Train ``spec`` with the CLI into RUNS/NAME unless that folder holds the finished run of the same
    command; a run of the same command that was cut short continues from its latest checkpoint
    (``resist train --resume``). Wall time (resumed runs add to it) goes to wall_s.txt, the library
    that trained it to library.txt."""
    out = runs / spec.name
    argv = [sys.executable, "-m", "resist.cli", *train_args(spec, runs, data_dir, extra)]
    cmd = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env.items())), "resist", *argv[3:]])
    done, started, wall = out / "command.txt", out / "command.pending", out / "wall_s.txt"
    if (out / "summary.json").is_file() and done.is_file() and done.read_text() == cmd:
        print(f"[experiments] reusing {out}", flush=True)
        return out
    before, library = 0.0, describe_library(library_state()) + "\n"
    if started.is_file() and started.read_text() == cmd and list((out / "checkpoints").glob("round_*.pt")):
        argv = [*argv[:4], "--resume", str(out)]
        before = float(wall.read_text()) if wall.is_file() else 0.0
        print(f"[experiments] resuming {out}", flush=True)
        prev = (out / "library.txt").read_text() if (out / "library.txt").is_file() else ""
        library = prev if library in prev else prev + library  # one line per library that trained it
    else:
        print(f"[experiments] {cmd}", flush=True)
        if out.is_dir() and any(out.iterdir()):
            argv += force_flag()
        out.mkdir(parents=True, exist_ok=True)
        for stale in (done, out / "summary.json"):  # another command's finished run is not this one
            stale.unlink(missing_ok=True)
        started.write_text(cmd)
    (out / "library.txt").write_text(library)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env={**os.environ, **spec.env, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate()
    finally:  # wall time so far, also when the suite is stopped: a resumed run adds to it
        wall.write_text(f"{before + time.perf_counter() - t0:.1f}\n")
    if proc.returncode != 0:
        raise SystemExit(f"experiments: {cmd} failed: {err.strip().splitlines()[-1:]}")
    done.write_text(cmd)
    return out


SHORT = {"test_acc": "acc", "test_bpb": "bpb"}  # the summary's best_/final_ names of a headline score


def collect(spec: Spec, run_dir: Path) -> dict:
    """A finished run as the tables read it; ``run`` (the metrics), ``summary``, ``config`` and ``rows``
    stay out of the JSON (`public`)."""
    run = read_run(run_dir)
    s = json.loads((run_dir / "summary.json").read_text())
    key = run.headline.key
    short = SHORT.get(key, key)
    wall = run_dir / "wall_s.txt"
    return {"name": spec.name, "suite": spec.suite, "label": spec.label, "dir": str(run_dir),
            "command": (run_dir / "command.txt").read_text() if (run_dir / "command.txt").is_file() else None,
            "algo": s["algo"], "workers": s["workers"], "seed": run.config["run"]["seed"],
            f"best_{short}": s[f"best_{short}"], f"final_{short}": s[f"final_{short}"],
            "time_to_best_s": s["time_to_best_s"], "time_s": s["time_s"],
            "wall_s": float(wall.read_text()) if wall.is_file() else None,
            "sent_mb": max(s["sent_bytes_per_worker"]) / 1e6, "curve": [(r["time_s"], r[key]) for r in run.evaluated],
            "run": run, "summary": s, "config": run.config, "rows": run.rows}


def public(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("run", "summary", "config", "rows")}


def copy_runs(results: list[dict], dest: Path) -> None:
    """Each run folder's files without checkpoints and weights into DEST/NAME (what the tables read);
    ``dir`` then names the copy."""
    for r in results:
        src, to = Path(r["dir"]), dest / Path(r["dir"]).name
        to.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".pt" and f.name != "command.pending" \
                    and not ((to / f.name).exists() and (to / f.name).samefile(f)):
                shutil.copy2(f, to / f.name)
        r["dir"] = str(to.relative_to(ROOT)) if to.resolve().is_relative_to(ROOT) else str(to)


# ---- numbers ----

def spread(values, fmt: str = "{:.2f}") -> str:
    """Mean ± standard deviation (the mean alone for one value, '-' for none; None values left out)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.replace('+', '').format(statistics.stdev(values))}"


def reach(r: dict | Run, target: float) -> float | None:
    """Parallel-equivalent seconds until the first evaluation at least as good as ``target``."""
    got = time_to(r["run"] if isinstance(r, dict) else r, target)
    return got.time_s if got else None


def ratios(lsgd: Run, resist: Run, target: float, costs) -> dict | None:
    """Local SGD's time, deterministic cost and bytes to ``target`` over ResIST's (None: one never got there;
    a ratio is None where it was not measured, or where the other run sent nothing, as a shallow ensemble)."""
    from resist.analysis.target import cost_for

    lt, rt = time_to(lsgd, target, cost_for(lsgd, costs)), time_to(resist, target, cost_for(resist, costs))
    if not (lt and rt):
        return None
    return {"time": lt.time_s / rt.time_s, "cost": lt.cost_s / rt.cost_s if lt.cost_s and rt.cost_s else None,
            "bytes": lt.sent_bytes / rt.sent_bytes if rt.sent_bytes else None}


def gap(lsgd: Run, resist: Run) -> dict[float, float]:
    """ResIST's headline score minus local SGD's at each epoch both evaluated (rounded to 3 places)."""
    key = lsgd.headline.key
    base = {round(r["epoch"], 3): r[key] for r in lsgd.evaluated}
    return {round(r["epoch"], 3): r[key] - base[round(r["epoch"], 3)] for r in resist.evaluated
            if round(r["epoch"], 3) in base}


def table(head: list[str], rows: list[list]) -> list[str]:
    line = lambda cells: "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"  # noqa: E731
    return [line(head), "|" + "---|" * len(head), *map(line, rows)]


# ---- tables of more than one suite ----

def main_table(runs: list[dict], algos, final: bool = False, delta: float = 1.0) -> list[str]:
    """Per worker count and algorithm, over seeds: the best (and ``final``) score, the time to the best
    and to a common target (local SGD's mean best, worsened by ``delta``), bytes, wall time."""
    head = runs[0]["run"].headline
    short, unit = SHORT[head.key], "test acc (%)" if head.higher_is_better else "test bits/byte"
    rows = []
    for w in sorted({r["workers"] for r in runs}):
        ref = [r[f"best_{short}"] for r in runs if r["workers"] == w and r["algo"] == "local_sgd"]
        target = statistics.fmean(ref) + (-delta if head.higher_is_better else delta) if ref else None
        for algo in algos:
            group = [r for r in runs if r["workers"] == w and r["algo"] == algo]
            if not group:
                continue
            reached = [t for t in (reach(r, target) for r in group) if t is not None] if ref else []
            to_target = ("-" if not ref else spread(reached) if len(reached) == len(group)
                         else f"{spread(reached)} ({len(reached)}/{len(group)} reached)")
            rows.append([w, algo, len(group), spread(r[f"best_{short}"] for r in group),
                         *([spread(r[f"final_{short}"] for r in group)] if final else []),
                         spread(r["time_to_best_s"] for r in group), to_target, spread(r["sent_mb"] for r in group),
                         spread(r["wall_s"] for r in group if r["wall_s"])])
        if target is not None:
            rows.append([w, "*target*", "", f"local SGD's best {'-' if head.higher_is_better else '+'} {delta:g} = "
                         f"{target:.{3 if final else 2}f}", *[""] * (5 if final else 4)])
    return table(["workers", "algorithm", "seeds", f"best {unit}", *([f"final {unit}"] if final else []),
                  "time to best (s)", "time to target (s)", "MB sent / worker", "wall time (s)"], rows)


def projection_table(runs: list[dict], gbits=(1.0, 10.0, 100.0), latency_us: float = 50.0) -> list[str]:
    """PROJECTION, not a measurement (``resist project``): each run's measured compute time plus the bytes
    its slowest worker sent over a link of ``gbits``, ``latency_us`` per message; speed-up over local SGD
    with the same workers and seed."""
    from resist.analysis.projection import compare, project_run

    rows = []
    for w in sorted({r["workers"] for r in runs}):
        for seed in sorted({r["seed"] for r in runs if r["workers"] == w}):
            group = sorted((r for r in runs if (r["workers"], r["seed"]) == (w, seed)),
                           key=lambda r: ("local_sgd", "resist", "data_parallel").index(r["algo"]))
            if not group or group[0]["algo"] != "local_sgd":
                continue
            proj = compare([project_run(r["rows"], r["algo"], gbits, latency_us, r["algo"]) for r in group])
            rows += [[w, seed, r["algo"], f"{p.measured_s:.1f}",
                      *(f"{p.projected_s[g]:.1f} ({p.speedup[g]:.2f}x)" for g in gbits)] for r, p in zip(group, proj)]
    return table(["workers", "seed", "algorithm", "measured (s)", *(f"{g:g} Gbit/s (s, speed-up)" for g in gbits)], rows)


# ---- micro-benchmarks ----

def median_s(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sgd_step(model, x, y, opt=None) -> None:
    """Forward, cross-entropy, backward and (with ``opt``) the optimizer step."""
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    if opt is not None:
        opt.step()


def flops(model, x, y) -> int:
    """Forward + backward FLOPs of one cross-entropy step (gradients cleared afterwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        sgd_step(model, x, y)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
