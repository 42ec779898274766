"""``resist``: a thin command line over the trainer. Parse, build the config, run, report.

Every user mistake ends in one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import ALGORITHMS, BN_EVAL_MODES, PRESETS, RUNTIMES, Config, preset

log = logging.getLogger("resist")
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see '{self.prog} --help')")


# flag -> config field; the type is the dataclass field's own.
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--algo": ("algo.name", str, f"one of {', '.join(ALGORITHMS)}"),
    "--workers": ("algo.workers", int, "number of workers S"),
    "--local-iters": ("algo.local_iters", int, "SGD steps between synchronizations"),
    "--min-depth": ("algo.min_depth", int, "minimum partitioned blocks per sub-ResNet"),
    "--partition": ("algo.partition", str, "section3 (ResIST) or naive (every block)"),
    "--warmup-epochs": ("algo.warmup_epochs", float, "local SGD epochs before ResIST"),
    "--bn-eval": ("algo.bn_eval", str, f"one of {', '.join(BN_EVAL_MODES)}"),
    "--recalib-batches": ("algo.recalib_batches", int, "batches for --bn-eval recalibrate"),
    "--model": ("model.name", str, "registry name ('resist models' lists them)"),
    "--width": ("model.width", float, "channel multiplier"),
    "--num-classes": ("model.num_classes", int, "output classes (default: the dataset's)"),
    "--layers": ("model.layers", lambda s: tuple(int(v) for v in s.split(",")), "blocks per section, e.g. 1,1,4,1"),
    "--dataset": ("data.dataset", str, "cifar10, cifar100, digits or synthetic"),
    "--data-dir": ("data.data_dir", str, "folder with the dataset files"),
    "--batch-size": ("data.batch_size", int, "training batch per worker"),
    "--epochs": ("optim.epochs", float, "training epochs"),
    "--lr": ("optim.lr", float, "initial learning rate"),
    "--momentum": ("optim.momentum", float, "SGD momentum"),
    "--weight-decay": ("optim.weight_decay", float, "weight decay"),
    "--seed": ("run.seed", int, "seed of everything random"),
    "--max-rounds": ("run.max_rounds", int, "stop after this many rounds"),
    "--eval-every": ("run.eval_every", int, "evaluate every this many rounds"),
    "--runtime": ("run.runtime", str, f"one of {', '.join(RUNTIMES)}"),
    "--backend": ("run.backend", str, "gloo or nccl (dist runtime)"),
    "--device": ("run.device", str, "cpu, cuda or auto"),
    "--timeout": ("run.timeout", float, "seconds to wait for a peer before failing"),
    "--out": ("run.out", str, "run folder"),
}
TRAIN_SWITCHES: dict[str, tuple[str, bool, str]] = {
    "--download": ("data.download", True, "download CIFAR (checksum-verified) if missing"),
    "--no-augment": ("data.augment", False, "no random crop / flip"),
    "--no-scale": ("algo.scale_activations", False, "do not scale partitioned blocks at evaluation"),
    "--carry-momentum": ("algo.carry_momentum", True, "carry momentum across rounds"),
}


def _typed(text: str) -> Any:
    """Parse ``--set section.field=value`` using JSON where it parses, else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.from_dict(json.loads(Path(args.config).read_text())) if args.config else preset(args.preset)
    overrides: dict[str, Any] = {}
    if os.environ.get("RESIST_DATA_DIR"):
        overrides["data.data_dir"] = os.environ["RESIST_DATA_DIR"]
    for flag, (key, _, _) in {**TRAIN_FLAGS, **TRAIN_SWITCHES}.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[key] = value
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set takes section.field=value, got {item!r}")
        overrides[key] = _typed(text)
    return cfg.replace(**overrides)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", nargs="?", default="demo", help=f"named preset ({', '.join(PRESETS)})")
    p.add_argument("--config", help="a config.json (e.g. from a run folder) instead of a preset")
    for flag, (_, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_)
    for flag, (_, value, help_) in TRAIN_SWITCHES.items():
        p.add_argument(flag, action="store_const", const=value, default=None, help=help_)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="any other config field")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = build_config(args)
    summary = train(cfg)
    print(f"{cfg.algo.name}: best test accuracy {summary['best_acc']:.2f}% in {summary['time_s']:.1f} s "
          f"(parallel-equivalent), {max(summary['sent_bytes_per_worker']) / 1e6:.2f} MB sent per worker; "
          f"run folder {cfg.run.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, fn in PRESETS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:28s} {doc[0] if doc else ''}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(build_config(args).dumps())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resist", description="ResIST: distributed training of ResNets by independent "
                                                 "sub-ResNets (Dun et al.).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("train", help="train with a preset plus overrides")
    _add_train_args(p)
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("config", help="print the resolved config of a preset plus overrides")
    _add_train_args(p)
    p.set_defaults(fn=cmd_show)
    sub.add_parser("presets", help="list the named presets").set_defaults(fn=cmd_presets)
    sub.add_parser("models", help="list the registered models").set_defaults(fn=cmd_models)
    p = sub.add_parser("demo", help="ResIST vs local SGD, side by side, in a few minutes")
    p.add_argument("--data-dir", default=None, help="folder with CIFAR-10 (default: $RESIST_DATA_DIR or ./data)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--max-rounds", type=int, default=None, help="cut each run short (a quick look)")
    p.add_argument("--runtime", choices=RUNTIMES, default="inprocess")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .train import setup_logging

    try:
        args = make_parser().parse_args(argv)
        setup_logging(args.verbose)
        return args.fn(args)
    except UsageError as e:
        print(f"resist: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:  # config, data and file mistakes, incl. DatasetError
        print(f"resist: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("resist: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:  # a failed peer, a diverged loss: a clear line, not a traceback
        from .comm import CommError
        from .train import TrainingError

        if isinstance(e, (CommError, TrainingError)):
            print(f"resist: error: {_one_line(e)}", file=sys.stderr)
            return 1
        raise


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
