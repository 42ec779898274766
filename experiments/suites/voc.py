"""Detection at CPU scale (paper §5, Table 6, scaled down): ResIST against local SGD on a generated
VOC-format set, through the released CLI.

The data set (``--data-dir``) is written by ``experiments/data/make_voc_like.py`` unless the folder already
holds it; every run is one ``resist train voc_cpu --algo A --workers S --seed K ...`` process. The tables
(docs/results/NAME.{md,json}): per worker count and algorithm the best test loss (the paper's metric),
mAP@0.5 at that evaluation, the parallel-equivalent training time and its speed-up over local SGD, and
the bytes each worker sent, beside the paper's Table 6; the run folders, without checkpoints and final
models, are copied to docs/results/NAME/.

    OMP_NUM_THREADS=1 taskset -c 1 python experiments/run.py voc --data-dir /tmp/voc13 --workers 2 4 --seeds 0 1 \\
        --runs runs/voc_cpu --name voc_cpu
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import common
from common import ROOT, copy_runs, options, public, record, spread, table
from suites.cifar10 import main_specs

ALGOS = ("resist", "local_sgd")
RUNS = "runs/voc_cpu"
#: Paper Table 6 (Pascal VOC 2007 test, 416-pixel inputs, 100 epochs; mean ± std as printed): test loss,
#: training time in seconds, ResIST's speed-up over local SGD.
PAPER_TABLE6 = {
    ("local_sgd", 2): ("6.15 ± 0.03", "39621 ± 9.12", "-"),
    ("local_sgd", 4): ("6.22 ± 0.06", "16840 ± 0.11", "-"),
    ("resist", 2): ("5.99 ± 0.01", "24058 ± 3.22", "1.64x"),
    ("resist", 4): ("6.69 ± 0.17", "11264 ± 49.38", "1.49x"),
}


def add_arguments(ap) -> None:
    options(ap, train_2007=(1000, "images of the generated set"), test_2007=500, train_2012=1000, data_seed=0,
            preset="voc_cpu", workers=[2, 4], seeds=[0], name="voc_cpu")
    ap.set_defaults(data_dir="/tmp/voc_like")


def specs(args):
    return [s for seed in args.seeds for s in main_specs(args.preset, args.workers, [seed], ALGOS)]


def generator(args) -> tuple[list[str], str]:
    """The generator's argv for ``--data-dir`` and the command it is recorded as."""
    flags = [f"--train-2007={args.train_2007}", f"--test-2007={args.test_2007}", f"--train-2012={args.train_2012}",
             f"--seed={args.data_seed}"]
    argv = [sys.executable, str(ROOT / "experiments" / "data" / "make_voc_like.py"), args.data_dir, *flags]
    return argv, " ".join(["python", "experiments/data/make_voc_like.py", args.data_dir, *flags])


def prepare(args) -> None:
    """Write the data set unless ``--data-dir`` holds the one of the same command."""
    argv, cmd = generator(args)
    stamp = Path(args.data_dir) / "generated_by.txt"
    if not (stamp.is_file() and stamp.read_text() == cmd):
        print(f"[voc] {cmd}", flush=True)
        subprocess.run(argv, check=True)
        stamp.write_text(cmd)


def voc_table(runs: list[dict]) -> list[str]:
    rows = []
    for w in sorted({r["workers"] for r in runs}):
        base = [r["time_s"] for r in runs if (r["workers"], r["algo"]) == (w, "local_sgd")]
        for algo in ("local_sgd", "resist"):
            g = [r for r in runs if (r["workers"], r["algo"]) == (w, algo)]
            if g:
                t = statistics.fmean(r["time_s"] for r in g)
                col = lambda k, fmt="{:.2f}": spread([r[k] for r in g], fmt)  # noqa: E731
                rows.append([w, algo, len(g), col("best_test_loss", "{:.3f}"), col("map50_at_best"),
                             col("map50_voc07_at_best"), col("best_map50"), col("time_s", "{:.1f}"),
                             f"{statistics.fmean(base) / t:.2f}x" if base and algo == "resist" else "-",
                             col("sent_mb"), col("wall_s", "{:.0f}"), *PAPER_TABLE6.get((algo, w), ("-", "-", "-"))])
    return table(["workers", "algorithm", "seeds", "best test loss", "mAP@0.5 there (%)", "mAP VOC07 there (%)",
                  "best mAP@0.5 (%)", "time (s)", "speed-up", "MB sent / worker", "wall (s)", "paper: test loss",
                  "paper: time (s)", "paper: speed-up"], rows)


def tabulate(args, results: list[dict], env: dict) -> None:
    for r in results:
        s, rows = r["summary"], r["rows"]
        r |= {k: s[k] for k in ("map50_at_best", "map50_voc07_at_best", "best_map50", "final_map50")}
        r["library"] = ", ".join(dict.fromkeys((Path(r["dir"]) / "library.txt").read_text().splitlines()))
        r["first_test_loss"] = next(x["test_loss"] for x in rows if "test_loss" in x)
        r["curve"] = [(round(x["epoch"], 3), x["test_loss"], x["map50"]) for x in rows if "test_loss" in x]
    env |= {"affinity": sorted(os.sched_getaffinity(0)), "threads": os.environ.get("OMP_NUM_THREADS")}
    cfg = results[0]["config"]
    d, o, a, m = cfg["data"], cfg["optim"], cfg["algo"], cfg["model"]
    lines = [
        f"# Detection on a generated VOC-format set ({args.name}): ResIST vs local SGD\n",
        f"Every number below comes from the run folders it lists (copied, without checkpoints and models, to "
        f"[{args.name}/]({args.name}/)); each run's exact command is in [{args.name}.json]({args.name}.json). "
        "The data set was written by:\n",
        "```bash", generator(args)[1], "```\n",
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
        f"**Machine**: runs pinned to core(s) {env['affinity']} with {env['threads'] or 'default'} thread(s); "
        f"trained with library {', '.join(sorted({r['library'] for r in results}))}. The core was "
        "shared with other jobs, so wall times and parallel-equivalent times carry that noise. **Time** is "
        "parallel-equivalent: per round the slowest worker's compute plus the synchronization (in-process runtime); "
        "speed-up = local SGD's time / ResIST's at the same workers. **Bytes**: what the busiest worker sent for "
        "synchronization over the run.\n",
        "## Results beside the paper's Table 6\n",
        "The paper's columns are its Pascal VOC runs (real data, ResNet101 at full width, 416 pixels, 100 epochs, "
        "V100 GPUs), quoted for their shape only: the scales differ by orders of magnitude.\n",
        *voc_table(results), "",
        "## Test loss and mAP@0.5 by epoch\n",
        *table(["run", "epoch: test loss / mAP@0.5 (%)"], [[Path(r["dir"]).name, ", ".join(
            f"{e:g}: {loss:.3f} / {m:.1f}" for e, loss, m in r["curve"])] for r in results]), "",
    ]
    copy_runs(results, common.RESULTS / args.name)
    record(args.name, {"generator": generator(args)[1], "preset": args.preset, "paper_table6": {
        f"{k[0]}_w{k[1]}": dict(zip(("test_loss", "time_s", "speedup"), v)) for k, v in PAPER_TABLE6.items()},
        "runs": [public(r) for r in results]}, lines, args.command, env)
