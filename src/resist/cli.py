"""``resist``: a thin command line over the trainer. Parse, build the config, run, report.

Every user mistake ends in one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .config import RESUMABLE_CHANGES, Config, field_docs, vocabulary
from .presets import PRESETS, TASK_PRESETS, preset
from . import registry
from .registry import RUNTIMES, first_sentence

log = logging.getLogger("resist")
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for."""


#: torchrun's own flags: given to resist, they mean the user wanted torchrun to start the processes.
TORCHRUN_FLAGS = ("--nproc-per-node", "--nproc_per_node", "--nproc", "--nnodes", "--node-rank", "--node_rank",
                  "--master-addr", "--master_addr", "--rdzv-backend", "--rdzv_backend", "--rdzv-endpoint",
                  "--rdzv_endpoint", "--rdzv-id", "--rdzv_id", "--standalone", "--max-restarts", "--max_restarts")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        if message.startswith("unrecognized arguments: "):
            given = [a.split("=")[0] for a in message.split(": ", 1)[1].split() if a.startswith("-")]
            torchrun = next((a for a in given if a in TORCHRUN_FLAGS), None)
            if torchrun:
                raise UsageError(f"{torchrun} is a flag of torchrun, which starts resist's processes: torchrun "
                                 f"--nproc-per-node N [--nnodes ...] -m resist.cli train ... --runtime dist --workers "
                                 f"N*nodes (on one machine, 'resist train ... --runtime dist --workers N' starts them)")
            known = [o for action in self._all_actions() for o in action.option_strings]
            message += "".join(registry.did_you_mean(a, known) for a in given[:1])
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def _all_actions(self) -> list[argparse.Action]:
        """This parser's options and the chosen subcommand's (an unknown flag is reported by the top parser)."""
        actions = list(self._actions)
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                for p in a.choices.values():
                    actions += p._actions
        return actions


def comma_lists(argv: Sequence[str]) -> None:
    """``--layers 1 1 1``: argparse takes the first number and then stumbles on the others."""
    comma = {f.name for f in train_flags() if getattr(f.type, "__name__", "").startswith("comma-separated")}
    comma.add("--layers")  # resist comm's
    number = lambda a: a.replace(".", "", 1).isdigit()  # noqa: E731
    for i, a in enumerate(argv[:-2]):
        if a in comma and number(argv[i + 1]) and number(argv[i + 2]):
            values = [v for v in argv[i + 1:] if number(v)]
            raise UsageError(f"{a} takes one comma-separated value: {a} {','.join(values)}")


# A training flag for every config field, named after it (``--local-iters`` sets ``algo.local_iters``)
# except where a shorter name reads better; its help is the field's docstring and its type the field's
# own, so a new field needs one edit: the field. Booleans get ``--x`` / ``--no-x``; a tuple of strings is
# a repeatable flag (``--extra-test A=DIR --extra-test B=DIR``), a tuple of numbers one comma-separated value.
FLAG_NAMES = {"algo.name": "--algo", "model.name": "--model", "optim.inner": "--inner-optim",
              "algo.scale_activations": "--scale", "run.out": "--out"}
# Fields whose values are a registry's vocabulary, their help lists it: a field typed with one of
# resist.registry's Literal types lists the type's names; these are registries of another kind.
CHOICES = {"algo.name": tuple(registry.ALGORITHMS), "run.log": registry.LOGGERS}


def _numbers(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(kind(v) for v in text.split(","))

    parse.__name__ = f"comma-separated {kind.__name__}"  # what argparse names in its error
    return parse


@dataclass
class Flag:
    name: str
    key: str
    type: Any  # a parser for the value, or bool for a --x / --no-x switch
    help: str
    repeat: bool = False  # given once per value, collected into a tuple
    default: Any = None  # the base config's value (a preset may change it)


def train_flags() -> list[Flag]:
    """The ``resist train`` flags, derived from the typed config."""
    docs = field_docs()
    flags = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[union-attr]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
            repeat = False
            if typing.get_origin(base) is tuple and typing.get_args(base)[0] is str:
                kind, repeat = str, True
            elif typing.get_origin(base) is tuple:
                kind = _numbers(typing.get_args(base)[0])
            else:
                kind = str if vocabulary(hint) else base  # the config names what a vocabulary allows
            help_ = first_sentence(docs[key]).replace("``", "'")
            choices = vocabulary(hint) or CHOICES.get(key)
            if choices:
                help_ += f" [{'|'.join(choices)}]"
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            flags.append(Flag(FLAG_NAMES.get(key, "--" + f.name.replace("_", "-")), key, kind, help_, repeat, default))
    names = [f.name for f in flags]
    assert len(names) == len(set(names)), "two config fields map to one flag"
    return flags


def _typed(text: str) -> Any:
    """Parse ``--set section.field=value`` using JSON where it parses, else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_config(path: Path) -> Config:
    try:
        return Config.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        raise UsageError(f"{path} is not a resist config ({e})") from None


def build_config(args: argparse.Namespace) -> Config:
    resume = getattr(args, "resume", None)
    if resume:
        if args.config or args.preset is not None:
            raise UsageError("--resume takes the run folder's own config; drop the preset / --config")
        cfg = read_config(Path(resume) / "config.json")
    else:
        name = args.preset or TASK_PRESETS.get(args.task, "demo")
        cfg = read_config(Path(args.config)) if args.config else preset(name)
    overrides: dict[str, Any] = {}
    if os.environ.get("RESIST_DATA_DIR") and not resume:
        overrides["data.data_dir"] = os.environ["RESIST_DATA_DIR"]
    for flag in train_flags():
        value = getattr(args, flag.name[2:].replace("-", "_"))
        if value is not None:
            overrides[flag.key] = tuple(value) if flag.repeat else value
    for item in args.set or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise UsageError(f"--set takes section.field=value, got {item!r}")
        overrides[key] = _typed(text)
    if getattr(args, "elastic", False):
        if overrides.get("run.runtime", "elastic") != "elastic":
            raise UsageError("--elastic is --runtime elastic; drop one of them")
        if "run.lighthouse" not in overrides:
            raise UsageError("--elastic joins a running lighthouse: add --lighthouse HOST:PORT (start one with "
                             "'resist lighthouse'), or use --runtime elastic to start one here with --workers workers")
        overrides["run.runtime"] = "elastic"
    if resume:
        fixed = sorted(k for k in overrides if k not in RESUMABLE_CHANGES)
        if fixed:
            raise UsageError(f"cannot change {', '.join(fixed)} when resuming; only where and how it runs "
                             f"({', '.join(sorted(RESUMABLE_CHANGES))})")
        overrides["run.out"] = str(resume)
    resolved = cfg.replace(**overrides)
    if args.preset and cfg.data.task != resolved.data.task:
        log.warning("preset %s is tuned for %s, not %s; the %s preset is %s", args.preset, cfg.data.task,
                    resolved.data.task, resolved.data.task, TASK_PRESETS[resolved.data.task])
    return resolved


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", nargs="?", default=None, help=f"named preset ({', '.join(PRESETS)}); default: "
                   f"{', '.join(f'{p} with --task {t}' for t, p in TASK_PRESETS.items())}")
    p.add_argument("--config", help="a config.json (e.g. from a run folder) instead of a preset")
    p.add_argument("--elastic", action="store_true",
                   help="join the lighthouse at --lighthouse as worker --worker-id (elastic training, docs/elastic.md)")
    for flag in train_flags():
        help_ = f"{flag.help} (default: {_shown(flag.default)})".replace("%", "%%")
        if flag.type is bool:
            p.add_argument(flag.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif flag.repeat:
            p.add_argument(flag.name, action="append", default=None, help=help_ + " (repeatable)")
        else:
            p.add_argument(flag.name, type=flag.type, default=None, help=help_)
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="any other config field")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def _not_a_file(out: str) -> None:
    if Path(out).is_file():
        raise UsageError(f"--out {out} is a file, not a folder; name the folder a run writes into (it is created)")


DEFAULTS_NOTE = ("Defaults shown are the base config's; a preset changes some ('resist config PRESET' prints what "
                 "a run would use).")


def cmd_train(args: argparse.Namespace) -> int:
    from .rundir import fresh_default
    from .train import train
    from .train.metrics import check_loggers
    from .train.trainer import under_torchrun

    cfg = build_config(args)
    _not_a_file(cfg.run.out)
    check_loggers(cfg.run.loggers)
    if args.force and args.resume:
        raise UsageError("--force starts a run afresh in place of the one in --out; it does not go with --resume")
    with fresh_default(cfg.run.out, args.preset or ("run" if args.config else "demo"), bool(args.resume),
                       args.auto_resume, cfg.run.runtime == "dist" and under_torchrun()) as out:
        cfg = cfg.replace(**{"run.out": out})
        summary = train(cfg, resume=True if args.resume else "auto" if args.auto_resume else False, force=args.force)
    from .tasks import make_task

    if cfg.run.runtime == "dist" and under_torchrun() and os.environ.get("RANK", "0") != "0":
        return 0  # torchrun runs this command once per rank: rank 0 reports the run
    if "time_s" not in summary:  # an elastic worker whose run's summary another worker wrote
        print(f"{cfg.algo.name}: worker {cfg.run.worker_id} done; the run's summary is with the worker that led "
              f"the last quorum")
        return 0
    print(f"{cfg.algo.name}: {make_task(cfg.data.task).headline_words(summary)} in {summary['time_s']:.1f} s "
          f"(parallel-equivalent), {max(summary['sent_bytes_per_worker']) / 1e6:.2f} MB sent per worker; "
          f"run folder {cfg.run.out}")
    return 0


def _wrapped(name: str, text: str, indent: int) -> str:
    """``name`` then ``text`` wrapped to the terminal, continuation lines under the text."""
    import shutil
    import textwrap

    width = max(60, min(120, shutil.get_terminal_size((100, 24)).columns))
    return textwrap.fill(text, width, initial_indent=f"{name:<{indent}}", subsequent_indent=" " * indent)


def cmd_lighthouse(args: argparse.Namespace) -> int:
    """Run a lighthouse until interrupted (torchft's: quorums and heartbeats for elastic workers)."""
    import time

    from .comm.membership import start_lighthouse

    if args.min_workers < 1:
        raise UsageError(f"--min-workers must be >= 1, got {args.min_workers}")
    server = start_lighthouse(bind=args.bind, min_workers=args.min_workers)
    print(f"resist lighthouse at {server.address()} (min {args.min_workers} workers); workers join with: resist "
          f"train ... --elastic --lighthouse {server.address()} --worker-id NAME", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()


def cmd_presets(args: argparse.Namespace) -> int:
    for name, fn in PRESETS.items():
        summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "'")
        print(_wrapped(name, summary, 26))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_model, list_models

    for name in list_models():
        print(f"{name:<22}{describe_model(name)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(build_config(args).dumps())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _not_a_file(args.out)
    run_demo(args)
    return 0


def cmd_comm(args: argparse.Namespace) -> int:
    from .train.comm_report import format_table, report

    rep = report(args.model, args.num_classes, args.width, args.workers, args.min_depth, rounds=args.rounds,
                 batch=args.batch, local_iters=args.local_iters, measured=not args.no_measure, layers=args.layers,
                 compress=args.compress)
    print(json.dumps(rep, indent=2) if args.json else format_table(rep))
    return 0


def _run_labels(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",")]


def _targets(runs: list, given: float | None) -> list:
    from .analysis.target import Target, default_targets

    return [Target("--target", given)] if given is not None else default_targets(runs)


def _step_costs(runs: list, path: str | None) -> list:
    from .analysis.target import cost_for, load_step_costs

    if path is None:
        return [None] * len(runs)
    table = load_step_costs(path)
    return [cost_for(r, table) for r in runs]


def cmd_plot(args: argparse.Namespace) -> int:
    from .analysis.plot import common_task, default_output, labels_for, plot_runs, read_run
    from .analysis.target import format_targets

    runs = [read_run(d, need_eval=True) for d in args.run_dirs]
    out = args.out or default_output(args.run_dirs, common_task(runs))
    labels = labels_for(runs, _run_labels(args.labels))
    targets = _targets(runs, args.target)
    out = plot_runs(runs, labels, out, log_bytes=args.log_bytes, targets=targets)
    print(format_targets(runs, labels, targets, _step_costs(runs, args.step_costs)))
    print(out)
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from .analysis.plot import HEADLINES, common_task, labels_for, read_run
    from .analysis.projection import check_link, compare, format_table, notes, project_run

    check_link(args.gbits, args.latency_us)
    runs = [read_run(d) for d in args.run_dirs]
    head = HEADLINES[common_task(runs)]
    labels = labels_for(runs, _run_labels(args.labels))
    algos = [r.algo for r in runs]
    projected = compare([project_run(r.rows, label, args.gbits, args.latency_us, r.algo)
                         for r, label in zip(runs, labels)])
    targets, costs = _targets(runs, args.target), _step_costs(runs, args.step_costs)
    if args.json:
        from dataclasses import asdict

        from .analysis.target import time_to

        best = [{"metric": head.key, "value": r.best(), "higher_is_better": head.higher_is_better} for r in runs]
        to = [{t.name: {"target": t.value, "reached": (lambda g: g and asdict(g))(time_to(r, t.value, c))}
               for t in targets} for r, c in zip(runs, costs)]
        print(json.dumps({"projection": True, "gbits": args.gbits, "latency_us": args.latency_us,
                          "runs": [dict(p.to_dict(), run_dir=str(r.path), best=b, to_target=tt)
                                   for p, r, b, tt in zip(projected, runs, best, to)],
                          "notes": notes(projected, args.latency_us, algos)}, indent=2))
    else:
        from .analysis.target import format_targets

        best = ["-" if r.best() is None else head.format(r.best()) for r in runs]
        column = f"best {head.unit} ({'higher' if head.higher_is_better else 'lower'} better)"
        print(format_table(projected, args.latency_us, algos, scores=(column, best)))
        if any(r.evaluated for r in runs):
            print(format_targets(runs, labels, targets, costs))
    return 0


def _add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=float, default=None, metavar="SCORE",
                   help="report time and bytes to first reach this score (default: the lowest of the runs' best "
                   "scores, and the first local SGD run's final score less 0.5 point of accuracy)")
    p.add_argument("--step-costs", default=None, metavar="FILE.json",
                   help="experiments/micro/step_breakdown.py results: adds a deterministic cost to the target (steps x the "
                   "step time measured on an idle core), for the models and widths it measured")


def _add_comm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="paper_resnet101", help="registry name ('resist models' lists them)")
    p.add_argument("--num-classes", type=int, default=100, help="output classes (default 100, as Table 1)")
    p.add_argument("--layers", type=_numbers(int), default=None, help="blocks per section, e.g. 1,1,4,1")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="worker counts S (default 2 4 8)")
    p.add_argument("--min-depth", type=int, default=0, help="minimum partitioned blocks per sub-ResNet (Table 1: 4)")
    p.add_argument("--rounds", type=int, default=3, help="synchronizations measured per worker count")
    p.add_argument("--batch", type=int, default=128, help="batch per step (data and pipeline parallel)")
    p.add_argument("--local-iters", type=int, default=50, help="SGD steps per round")
    p.add_argument("--no-measure", action="store_true", help="skip the measurement on gloo processes")
    p.add_argument("--compress", default="none", help=f"measure with this codec [{'|'.join(registry.CODECS)}]")
    p.add_argument("--json", action="store_true", help="print one JSON object (exact bytes)")
    p.set_defaults(fn=cmd_comm)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="resist", description="ResIST: distributed training of ResNets by independent "
                                                 "sub-ResNets (Dun et al.).")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("train", help="train with a preset plus overrides", epilog=DEFAULTS_NOTE)
    _add_train_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="resume from --out's latest checkpoint if there is one (for torchrun --max-restarts)")
    p.add_argument("--force", action="store_true",
                   help="replace the run already in --out (its own files only; other files stay)")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("lighthouse", help="the coordinator of an elastic run: workers join it with --elastic "
                       "--lighthouse HOST:PORT")
    p.add_argument("--bind", default="[::]:29510", help="address to listen on (default [::]:29510)")
    p.add_argument("--min-workers", type=int, default=1, help="the fewest workers a run goes on with (default 1)")
    p.set_defaults(fn=cmd_lighthouse)
    p = sub.add_parser("config", help="print the resolved config of a preset plus overrides", epilog=DEFAULTS_NOTE)
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
    p.add_argument("--force", action="store_true", help="replace the demo already in --out")
    p.set_defaults(fn=cmd_demo)
    _add_comm_args(sub.add_parser("comm", help="bytes per round: paper convention (Table 1), measured, "
                                  "data/pipeline parallel"))
    p = sub.add_parser("plot", help="the task's test score (accuracy; bits per byte for --task lm) vs time and "
                       "vs bytes sent, one line per run (a PNG)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (with metrics.jsonl)")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help="output file (default RUN_DIR/accuracy.png, bits_per_byte.png for --task lm; "
                   "RUN_DIR/../ for several runs)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="one legend label per run (default: algo S=workers)")
    p.add_argument("--log-bytes", action="store_true", help="communication axis on a log scale (paper Fig. 8)")
    _add_target_args(p)
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("project", help="PROJECTION of each run's wall-clock time at other link speeds")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (with metrics.jsonl); speed-ups are "
                   "relative to the first")
    p.add_argument("--gbits", type=float, nargs="+", default=[1.0, 10.0, 100.0], help="link speeds in Gbit/s "
                   "(default 1 10 100)")
    p.add_argument("--latency-us", type=float, default=50.0, help="latency per message in microseconds (default 50)")
    p.add_argument("--labels", default=None, metavar="A,B,...", help="one label per run (default: algo S=workers)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_target_args(p)
    p.set_defaults(fn=cmd_project)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .train import setup_logging

    try:
        comma_lists(sys.argv[1:] if argv is None else list(argv))
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
    from .io import printable

    return printable(" ".join(str(e).split())) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
