"""Detection at CPU scale (paper §5, Table 6, scaled down): ResIST against local SGD on a generated
VOC-format set, through the released CLI.

The data set is written by ``bench/make_voc_like.py`` (unless the folder already holds it); every run is
one ``resist train voc_cpu --algo A --workers S --seed K ...`` process with its own run folder (a folder
that already holds the finished run of the same command is reused). Then docs/results/NAME.{md,json}
are written: per worker count and algorithm the best test loss (the paper's metric), mAP@0.5 at that
evaluation, the parallel-equivalent training time and its speed-up over local SGD, and the bytes each
worker sent, beside the paper's Table 6; the run folders, without checkpoints and final models, are
copied to docs/results/NAME/.

    OMP_NUM_THREADS=1 taskset -c 1 python bench/voc_table.py --voc-dir /tmp/voc13 --workers 2 4 --seeds 0 \\
        --runs runs/voc_cpu --name voc_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchutil import OUT, ROOT, describe_library, library_state

ALGOS = ("resist", "local_sgd")
#: Paper Table 6 (Pascal VOC 2007 test, 416-pixel inputs, 100 epochs; mean ± std as printed): test loss,
#: training time in seconds, ResIST's speed-up over local SGD.
PAPER_TABLE6 = {
    ("local_sgd", 2): ("6.15 ± 0.03", "39621 ± 9.12", "-"),
    ("local_sgd", 4): ("6.22 ± 0.06", "16840 ± 0.11", "-"),
    ("resist", 2): ("5.99 ± 0.01", "24058 ± 3.22", "1.64x"),
    ("resist", 4): ("6.69 ± 0.17", "11264 ± 49.38", "1.49x"),
}
RUN_FILES = ("command.txt", "library.txt", "config.json", "metrics.jsonl", "summary.json", "wall_s.txt", "classes.json")


def generate(voc_dir: Path, counts: dict[str, int], seed: int) -> str:
    """Write the data set unless ``voc_dir`` holds it; returns the generator's command."""
    argv = [sys.executable, str(ROOT / "bench" / "make_voc_like.py"), str(voc_dir),
            *(f"--{k}={v}" for k, v in counts.items()), f"--seed={seed}"]
    command = " ".join(["python", "bench/make_voc_like.py", str(voc_dir), *argv[3:]])
    stamp = voc_dir / "generated_by.txt"
    if stamp.is_file() and stamp.read_text() == command:
        print(f"[voc] reusing {voc_dir}", flush=True)
        return command
    print(f"[voc] {command}", flush=True)
    subprocess.run(argv, check=True)
    stamp.write_text(command)
    return command


def run(algo: str, workers: int, seed: int, preset: str, voc_dir: Path, runs: Path, extra: list[str]) -> Path:
    """Train one run with the CLI unless its folder already holds that finished run."""
    out = runs / f"{algo}_w{workers}_s{seed}"
    argv = [sys.executable, "-m", "resist.cli", "train", preset, "--algo", algo, "--workers", str(workers),
            "--seed", str(seed), "--data-dir", str(voc_dir), "--out", str(out), *extra]
    record = " ".join(["resist", *argv[3:]])
    if (out / "summary.json").is_file() and (out / "command.txt").is_file() and (out / "command.txt").read_text() == record:
        print(f"[voc] reusing {out}", flush=True)
        return out
    print(f"[voc] {record}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    state = library_state()
    (out / "library.txt").write_text(describe_library(state, state) + "\n")  # what this run was trained with
    t0 = time.perf_counter()
    # --force: this command replaces whatever run the folder held (not in the record)
    proc = subprocess.run([*argv, "--force"], env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    (out / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    if proc.returncode != 0:
        raise SystemExit(f"voc_table: {record} failed: {proc.stderr.strip().splitlines()[-1:]}")
    (out / "command.txt").write_text(record)
    return out


def collect(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"dir": run_dir.name, "command": (run_dir / "command.txt").read_text(), "algo": s["algo"],
            "workers": s["workers"], "seed": cfg["run"]["seed"], "best_test_loss": s["best_test_loss"],
            "map50_at_best": s["map50_at_best"], "map50_voc07_at_best": s["map50_voc07_at_best"],
            "best_map50": s["best_map50"], "final_test_loss": s["final_test_loss"], "final_map50": s["final_map50"],
            "time_s": s["time_s"], "time_to_best_s": s["time_to_best_s"],
            "wall_s": float((run_dir / "wall_s.txt").read_text()), "sent_mb": max(s["sent_bytes_per_worker"]) / 1e6,
            "library": (run_dir / "library.txt").read_text().strip(),
            "first_test_loss": next(r["test_loss"] for r in rows if "test_loss" in r),
            "curve": [(round(r["epoch"], 3), r["test_loss"], r["map50"]) for r in rows if "test_loss" in r],
            "config": cfg}


def spread(values: list[float], digits: int = 2) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict]) -> list[str]:
    lines = ["| workers | algorithm | seeds | best test loss | mAP@0.5 there (%) | mAP VOC07 there (%) | best mAP@0.5 (%) "
             "| time (s) | speed-up | MB sent / worker | wall (s) | paper: test loss | paper: time (s) | paper: speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w in sorted({r["workers"] for r in runs}):
        base = [r["time_s"] for r in runs if (r["workers"], r["algo"]) == (w, "local_sgd")]
        for algo in ("local_sgd", "resist"):
            g = [r for r in runs if (r["workers"], r["algo"]) == (w, algo)]
            if not g:
                continue
            t = statistics.fmean(r["time_s"] for r in g)
            speed = f"{statistics.fmean(base) / t:.2f}x" if base and algo == "resist" else "-"
            paper = PAPER_TABLE6.get((algo, w), ("-", "-", "-"))
            lines.append(f"| {w} | {algo} | {len(g)} | {spread([r['best_test_loss'] for r in g], 3)} | "
                         f"{spread([r['map50_at_best'] for r in g])} | {spread([r['map50_voc07_at_best'] for r in g])} | "
                         f"{spread([r['best_map50'] for r in g])} | {spread([r['time_s'] for r in g], 1)} | {speed} | "
                         f"{spread([r['sent_mb'] for r in g])} | {spread([r['wall_s'] for r in g], 0)} | "
                         f"{paper[0]} | {paper[1]} | {paper[2]} |")
    return lines


def curves(runs: list[dict]) -> list[str]:
    lines = ["| run | " + " | ".join(["epoch: test loss / mAP@0.5 (%)"]) + " |", "|---|---|"]
    for r in runs:
        lines.append(f"| {r['dir']} | " + ", ".join(f"{e:g}: {loss:.3f} / {m:.1f}" for e, loss, m in r["curve"]) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voc-dir", default="/tmp/voc_like", help="where the generated VOC-format set is (written if absent)")
    ap.add_argument("--train-2007", type=int, default=1000)
    ap.add_argument("--train-2012", type=int, default=1000)
    ap.add_argument("--test-2007", type=int, default=500)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--preset", default="voc_cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--runs", default="runs/voc_cpu", help="folder for the run folders")
    ap.add_argument("--name", default="voc_cpu")
    ap.add_argument("extra", nargs="*", help="more `resist train` flags for every run, after --")
    args = ap.parse_args()
    voc_dir = Path(args.voc_dir)
    counts = {"train-2007": args.train_2007, "test-2007": args.test_2007, "train-2012": args.train_2012}
    generator = generate(voc_dir, counts, args.data_seed)
    start = library_state()
    runs_dir = Path(args.runs)
    results = [collect(run(algo, w, seed, args.preset, voc_dir, runs_dir, args.extra))
               for seed in args.seeds for w in args.workers for algo in ALGOS]
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(), "cores": os.cpu_count(),
           "affinity": sorted(os.sched_getaffinity(0)), "threads": os.environ.get("OMP_NUM_THREADS"),
           "library": describe_library(start, library_state())}
    cfg = results[0]["config"]
    d, o, a, m = cfg["data"], cfg["optim"], cfg["algo"], cfg["model"]
    lines = [
        f"# Detection on a generated VOC-format set ({args.name}): ResIST vs local SGD\n",
        "Written by `bench/voc_table.py`; every number below comes from the run folders it lists (copied, "
        f"without checkpoints and models, to [{args.name}/]({args.name}/)); each run's exact command is in "
        f"[{args.name}.json]({args.name}.json).\n",
        "```bash", generator,
        f"OMP_NUM_THREADS={env['threads'] or 1} taskset -c {','.join(map(str, env['affinity']))} python bench/voc_table.py "
        f"--voc-dir {voc_dir} --workers {' '.join(map(str, args.workers))} --seeds {' '.join(map(str, args.seeds))} "
        f"--runs {runs_dir} --name {args.name}", "```\n",
        f"**Data**: {args.train_2007} + {args.train_2012} training images (VOC2007 + VOC2012 trainval) and "
        f"{args.test_2007} test images (VOC2007 test), 96-160 pixels (stretched to {d['input_size']}), 1-4 objects each of 5 VOC classes drawn as "
        "shapes over smooth noise (objects under 10% of the image side marked difficult). "
        f"**Setting** (preset `{args.preset}`): {m['name']} at width {m['width']:g}, {d['input_size']}-pixel inputs, "
        f"batch {d['batch_size']} per worker, {o['epochs']:g} epochs, SGD momentum {o['momentum']} (restarted each round), "
        f"weight decay {o['weight_decay']}, lr rising linearly to {o['lr']} over {o['lr_warmup_epochs']:g} epochs and "
        f"divided by 10 at {', '.join(f'{f:.0%}' for f in o['lr_decay_at'])} of training, {a['local_iters']} local "
        f"steps per round, no augmentation, the 20 VOC classes in the head; evaluation every {cfg['run']['eval_every']} "
        "rounds on the whole test set (test loss = the YOLOv2 loss per image, the paper's metric; mAP@0.5 as VOC "
        "2010+ area and VOC07 11-point, over the 5 classes present).\n",
        f"**Machine**: {env['machine']}, {env['cores']} cores, runs pinned to core(s) {env['affinity']} with one "
        f"thread, torch {env['torch']}, Python {env['python']}, library {env['library']}, {env['date']}. The core was "
        "shared with other jobs, so wall times and parallel-equivalent times carry that noise. **Time** is "
        "parallel-equivalent: per round the slowest worker's compute plus the synchronization (in-process runtime); "
        "speed-up = local SGD's time / ResIST's at the same workers. **Bytes**: what the busiest worker sent for "
        "synchronization over the run.\n",
        "## Results beside the paper's Table 6\n",
        "The paper's columns are its Pascal VOC runs (real data, ResNet101 at full width, 416 pixels, 100 epochs, "
        "V100 GPUs), quoted for their shape only: the scales differ by orders of magnitude.\n",
        *table(results), "",
        "## Test loss and mAP@0.5 by epoch\n", *curves(results), "",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    copy_dir = OUT / args.name
    for r in results:
        dst = copy_dir / r["dir"]
        dst.mkdir(parents=True, exist_ok=True)
        for f in RUN_FILES:
            if (runs_dir / r["dir"] / f).is_file():
                shutil.copy2(runs_dir / r["dir"] / f, dst / f)
    body = {"env": env, "generator": generator, "preset": args.preset, "paper_table6": {
        f"{k[0]}_w{k[1]}": dict(zip(("test_loss", "time_s", "speedup"), v)) for k, v in PAPER_TABLE6.items()},
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in results]}
    (OUT / f"{args.name}.json").write_text(json.dumps(body, indent=2) + "\n")
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
