"""Run an experiment suite and write its tables: ``python experiments/run.py SUITE [options] [-- train flags]``.

A suite (experiments/suites/SUITE.py) lists its runs (``specs(args)``: ``resist train`` commands with a
folder name each) and writes its tables from the finished runs (``tabulate(args, results, env)``). Every run
trains unless its folder holds the finished run of the same command; a run that was cut short resumes
from its latest checkpoint; ``--only-existing`` trains nothing and tabulates the finished runs; ``--list``
prints the runs. Flags after ``--`` go to every run. ``python experiments/run.py SUITE --help`` lists a
suite's own options; a suite's docstring says what it measures and the command its results came from.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

SUITES = sorted(p.stem for p in (HERE / "suites").glob("[a-z]*.py"))


def load(name: str):
    return importlib.import_module(f"suites.{name}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Split at "--" by hand: argparse matches the optional positional `extra` (empty) together with the
    # suite's name, and then refuses whatever follows "--".
    argv, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    suite = load(argv[0]) if argv and argv[0] in SUITES else None
    ap = argparse.ArgumentParser(description=(suite.__doc__ if suite else __doc__).split("\n\n")[0],
                                 epilog=None if suite else "suites: " + ", ".join(SUITES))
    ap.add_argument("suite", choices=SUITES)
    ap.add_argument("--data-dir", default=os.environ.get("RESIST_DATA_DIR", "data"), help="--data-dir of every run")
    ap.add_argument("--runs", type=Path, default=None, help="folder of the run folders (default: the suite's)")
    ap.add_argument("--only-existing", action="store_true", help="tabulate the finished runs; train nothing")
    ap.add_argument("--only", nargs="+", help="these runs only, in this order")
    ap.add_argument("--list", action="store_true", help="print every run's name and command; train nothing")
    ap.add_argument("--results", type=Path, default=common.RESULTS, help="where the tables go (default docs/results, "
                    "or $RESIST_RESULTS)")
    if suite is not None and hasattr(suite, "add_arguments"):
        suite.add_arguments(ap)
    ap.epilog = ((ap.epilog or "") + " Flags after -- go to every run's `resist train`.").strip()
    args = ap.parse_args(argv)
    args.extra = extra
    runs = getattr(suite, "RUNS", "runs")
    args.runs = args.runs or Path(runs(args) if callable(runs) else runs)
    common.RESULTS, args.command = args.results, common.command([__file__, *argv, *(["--", *extra] if extra else [])])
    specs = suite.specs(args)
    every = {s.name: s for s in specs}
    if args.list:
        for s in specs:
            print(s.name, s.preset, " ".join([*s.flags, *s.tail, *args.extra]))
        return
    unknown = [n for n in args.only or [] if n not in every]
    if unknown:
        raise SystemExit(f"{args.suite}: unknown run(s) {', '.join(unknown)}; --list prints every name")
    specs = [every[n] for n in args.only] if args.only else specs
    start = common.library_state()
    if hasattr(suite, "execute"):  # runs that are not one `resist train` each (namespaces, PyTorch's own)
        if args.only_existing:
            raise SystemExit(f"{args.suite}: its runs are not `resist train` folders; --only-existing does not apply")
        results = suite.execute(args, specs)
    else:
        if not (args.only_existing or getattr(suite, "TABULATE_ONLY", False)) and hasattr(suite, "prepare"):
            suite.prepare(args)
        results = []
        for spec in specs:
            out = args.runs / spec.name
            if args.only_existing or getattr(suite, "TABULATE_ONLY", False):
                if not (out / "summary.json").is_file():
                    continue
            else:
                out = common.launch(spec, args.runs, args.data_dir, args.extra)
            results.append(common.collect(spec, out))
        if not results:
            raise SystemExit(f"{args.suite}: no finished runs under {args.runs}")
    if results is not None:
        suite.tabulate(args, results, common.environment(start))


if __name__ == "__main__":
    main()
