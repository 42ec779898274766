"""Time-to-accuracy suite (issue 20): the long CIFAR-10 runs behind the gap study, one after another.

Every run is one ``resist train PRESET ...`` process through ``cifar10_table.run`` (a finished run with the
same command is reused, an interrupted one resumes from its latest checkpoint), evaluated on the whole
test set every round, which at 4 workers and 25 local steps is 4 evaluations an epoch. The runs are
meant to be made in the background on one core from a frozen worktree of main, so that every run of a
group is trained by one library; each run folder records that library in ``library.txt``.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/tta_suite.py --data-dir ../shared/data/cifar10 \\
        --runs /work/long_runs/tta --only base_lsgd_w4_s0 base_resist_w4_s0

Groups (``--list`` prints every name): ``base`` (ResIST and local SGD, 8 epochs), ``var`` (part 3's
variants of ResIST at 4 workers, 1/8 width, 8 epochs), ``len`` / ``wide`` / ``w8`` / ``tm`` (part 2: 16
epochs, 1/4 width, 8 workers, time-matched local SGD). The tables come from ``bench/tta_table.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchutil import git
from cifar10_table import Spec, run

PRESET = "cifar10_cpu_long"
GPU_PRESET = "cifar10_gpu_short"  # full width, 14 epochs, on one GPU (bench/gpu_session.sh tta)


def recipe(epochs: float) -> list[str]:
    """Part 3's best recipe as flags for a run of ``epochs`` (the GPU twin repeats it at full width)."""
    return ["--cooldown-epochs", f"{0.1 * epochs:g}"]


def _spec(name: str, workers: int, seed: int, algo: str, *flags: str) -> Spec:
    return Spec(name, name.split("_")[0], name, workers, seed,
                ["--algo", algo, "--workers", str(workers), "--seed", str(seed), *flags])


def specs() -> list[Spec]:
    """Every run of the suite, in the order a cut-short suite should have them."""
    out: list[Spec] = []
    for seed in (0, 1):
        out += [_spec(f"base_lsgd_w4_s{seed}", 4, seed, "local_sgd"),
                _spec(f"base_resist_w4_s{seed}", 4, seed, "resist")]
    variants = {
        "carrymom": ["--carry-momentum"],
        "warm1": ["--warmup-epochs", "1"],
        "warm05": ["--warmup-epochs", "0.5"],
        "iters10": ["--local-iters", "10"],
        "iters50": ["--local-iters", "50"],
        "outer07m09": ["--outer-lr", "0.7", "--outer-momentum", "0.9"],
        "outer10m05": ["--outer-lr", "1.0", "--outer-momentum", "0.5"],
        "recalib": ["--bn-eval", "recalibrate"],
        "cool05": ["--cooldown-epochs", "0.4"],
        "cool10": ["--cooldown-epochs", "0.8"],
        "cool20": ["--cooldown-epochs", "1.6"],
    }
    for seed in (0, 1):
        out += [_spec(f"var_{k}_w4_s{seed}", 4, seed, "resist", *v) for k, v in variants.items()]
    for seed in (0, 1):
        out += [_spec(f"len16_lsgd_w4_s{seed}", 4, seed, "local_sgd", "--epochs", "16"),
                _spec(f"len16_resist_w4_s{seed}", 4, seed, "resist", "--epochs", "16")]
    out += [_spec("wide4_lsgd_w4_s0", 4, 0, "local_sgd", "--width", "0.25"),
            _spec("wide4_resist_w4_s0", 4, 0, "resist", "--width", "0.25")]
    # 8 workers: 49 steps an epoch per worker, so 2 rounds an epoch at 25 local steps.
    out += [_spec("w8_lsgd_w8_s0", 8, 0, "local_sgd"),
            _spec("w8_resist_w8_s0", 8, 0, "resist"),
            _spec("w8_resistmd4_w8_s0", 8, 0, "resist", "--min-depth", "4"),
            _spec("w8_ensemble_w8_s0", 8, 0, "ensemble")]
    # Local SGD for the epochs that cost what ResIST's 8 epochs cost (ResIST's step at 4 workers is
    # about 0.55x local SGD's on this machine: docs/results/step_breakdown.md).
    out += [_spec(f"tm_lsgd_w4_s{seed}", 4, seed, "local_sgd", "--epochs", "4.4") for seed in (0, 1)]
    # The GPU twin (part 6): full width, cifar10_gpu_short, most telling first: a second seed of the pair
    # measured on the H200, the recipe, and local SGD for the epochs that cost what ResIST's 14 cost
    # there (0.59x: docs/results/cifar10_gpu_w4_tables.md). 25 local steps give 4 evaluations an epoch.
    gpu = ["--local-iters", "25", "--device", "auto"]
    out += [_spec("gpu_resist_w4_s1", 4, 1, "resist", *gpu), _spec("gpu_lsgd_w4_s1", 4, 1, "local_sgd", *gpu),
            _spec("gpu_recipe_w4_s0", 4, 0, "resist", *gpu, *recipe(14)),
            _spec("gpu_tmlsgd_w4_s0", 4, 0, "local_sgd", *gpu, "--epochs", "8.3"),
            _spec("gpu_resist_w4_s0", 4, 0, "resist", *gpu), _spec("gpu_lsgd_w4_s0", 4, 0, "local_sgd", *gpu)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"))
    ap.add_argument("--runs", default="runs/tta", help="folder for the run folders")
    ap.add_argument("--only", nargs="+", help="run these names, in this order (default: every run)")
    ap.add_argument("--list", action="store_true", help="print every run's name and flags, train nothing")
    args = ap.parse_args()
    every = {s.name: s for s in specs()}
    if args.list:
        for s in every.values():
            print(s.name, " ".join(s.flags))
        return
    unknown = [n for n in args.only or [] if n not in every]
    if unknown:
        raise SystemExit(f"tta_suite: unknown run(s) {', '.join(unknown)}; --list prints every name")
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"tta_suite: data folder {args.data_dir} does not exist; pass --data-dir or set RESIST_DATA_DIR")
    library = git("rev-parse", "HEAD")
    for name in args.only or list(every):
        out = Path(args.runs) / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "library.txt").write_text(library + "\n")
        preset = GPU_PRESET if name.startswith("gpu_") else PRESET
        run(every[name], preset, args.data_dir, Path(args.runs), ["--eval-every", "1"])
        print(f"[tta] done {name}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
