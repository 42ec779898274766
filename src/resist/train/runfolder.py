"""What a run folder holds about the run and whether it goes on: its config and classes, the checkpoint
a run resumes from (and who decides under torchrun), a finished run left alone. Who owns the folder
(the mark, the lock) is :mod:`resist.rundir`'s."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from .. import rundir
from ..comm import Communicator
from ..config import RESUMABLE_CHANGES, Config, differences
from ..data import DataSource, DatasetError
from ..io import atomic_write_json, atomic_write_text
from . import checkpoint
from .schedule import Schedule, resume_point_in

log = logging.getLogger("resist")


CLASSES_FILE = "classes.json"


def prepare_run_dir(cfg: Config, resuming: bool, classes: tuple[str, ...] | None = None) -> Path:
    """Create the run folder with ``config.json`` and, for a dataset whose classes are folder names,
    ``classes.json`` (the class of each output index). A previous run's files are gone by now
    (:func:`resist.rundir.claim`), so a fresh run cannot be mistaken for the one that was here before."""
    out = Path(cfg.run.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.dumps() + "\n", out / "config.json")
        if classes is not None and not resuming:
            atomic_write_json(list(classes), out / CLASSES_FILE)
    except OSError as e:
        raise ValueError(f"cannot write the run folder {out}: {e.strerror or e}") from None
    return out


def check_classes(run_dir: Path, classes: tuple[str, ...] | None, where: str) -> None:
    """A resumed run must see the classes it was trained with, in the same order: the output index
    of each class is its position in the sorted folder names, so one folder added, removed or renamed
    shifts the meaning of every index after it."""
    if classes is None:
        return
    path = Path(run_dir) / CLASSES_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing, so the class of each output cannot be checked against "
                           f"{where}; restore it or start a new run folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is unreadable ({e}); restore it or start a new run folder") from None
    if list(saved) != list(classes):
        first = next((i for i, (a, b) in enumerate(zip(saved, classes)) if a != b), min(len(saved), len(classes)))
        theirs = repr(saved[first]) if first < len(saved) else "nothing"
        ours = repr(classes[first]) if first < len(classes) else "nothing"
        raise DatasetError(f"the classes of {where} ({len(classes)}) are not those this run was trained with "
                           f"({len(saved)}, {path}): class {first} was {theirs}, now {ours}")


def resume_point(cfg: Config, run_dir: Path, dataset: DataSource | None = None) -> Path:
    """The checkpoint to continue ``run_dir`` from, after checking it belongs to ``cfg`` (and that the
    dataset has the classes the run was trained with)."""
    path = checkpoint.latest(run_dir)
    if path is None:
        raise ValueError(f"no checkpoint in {checkpoint.folder(run_dir)}; nothing to resume")
    saved_payload = checkpoint.load(path)
    saved = Config.from_dict(saved_payload["config"])
    changed = [k for k in differences(saved, cfg) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{path} belongs to another config ({', '.join(changed)} differ); "
                         f"resume with the run's own config or start a new run folder")
    if dataset is not None:
        check_classes(run_dir, dataset.classes, dataset.source)
        sched = Schedule.of(cfg, dataset.n_train)
        point = resume_point_in(saved_payload, cfg, sched, dataset.n_train)
        if point.round > sched.rounds:  # only a --max-rounds below the checkpoint's round gets here
            raise ValueError(f"{path} continues at round {point.round}, past the end of this run at round "
                             f"{sched.rounds} (--max-rounds {cfg.run.max_rounds}); to train further, resume with "
                             f"--max-rounds above {point.round}")
    return path


def finished_summary(cfg: Config, run_dir: Path, path: Path, dataset: DataSource) -> dict[str, Any] | None:
    """The summary of a finished run that resuming from ``path`` would not train further, else None.

    Such a run is left as it is: resuming it would only rewrite its config and summary (with the byte
    counters of a run that sent nothing, under another worker count perhaps)."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file():
        return None  # unfinished, or finished but cut off before its summary: resuming completes it
    try:
        done, problem = json.loads(summary.read_text()), None
    except (OSError, ValueError) as e:
        done, problem = {}, e
    stopped = done.get("stopped_at_target")
    if stopped and cfg.run.stop_at != stopped["target"]:
        return None  # it stopped at a target this resume does not ask for: it trains on
    if stopped:
        log.info("%s reached --stop-at %g after round %d: nothing to resume, so it is left as it is; resume with "
                 "another --stop-at (or none) to train it further", run_dir, stopped["target"], stopped["round"])
        return done
    saved = checkpoint.load(path)
    sched = Schedule.of(cfg, dataset.n_train)
    # Only a --max-rounds other than the run's own extends it: with another worker count alone the same
    # max_rounds would mean more epochs, which nobody asked for.
    extended = cfg.run.max_rounds != Config.from_dict(saved["config"]).run.max_rounds
    if extended and resume_point_in(saved, cfg, sched, dataset.n_train).round < sched.rounds:
        return None
    full = math.ceil(sched.total_steps / cfg.algo.local_iters)
    more = (f"resume with --max-rounds above {sched.rounds} to train it further" if sched.rounds < full else
            f"it trained all its {cfg.optim.epochs:g} epochs, and more epochs change the learning-rate schedule, "
            f"so they are a new run (--epochs, another --out)")
    log.info("%s is finished (round %d of %d): nothing to resume, so it is left as it is; %s", run_dir,
             sched.rounds, sched.rounds, more)
    if problem is not None:
        raise ValueError(f"{summary} is unreadable ({problem}); the run is finished, its model is {run_dir / 'model.pt'}")
    return done


def claim_run_folder(cfg: Config, resume: bool | str, force: bool) -> rundir.RunLock:
    """Lock ``cfg.run.out`` for this run; a fresh run takes it over (see :func:`resist.rundir.claim`)."""
    out = Path(cfg.run.out)
    fresh = resume is False or (resume == "auto" and checkpoint.latest(out) is None)
    # torchrun restarts an auto-resumed job in its own folder: a start that left neither a checkpoint
    # nor a summary is replaced, as it would be resumed had it written one.
    return rundir.claim(out, fresh=fresh, force=force or (
        resume == "auto" and fresh and not (out / "summary.json").exists()))


def agree_on_resume(comm: Communicator, out: Path, resume: str | None) -> str | None:
    """Collective: rank 0 alone decides whether and where the run resumes, and every rank follows.

    Under torchrun each process decides for itself before any communication exists, and a node that
    cannot see rank 0's run folder would start afresh beside ranks that resume. Rank 0's choice is
    broadcast as a round; every rank then reads that checkpoint, so the run folder must be on storage
    that every node reads (a rank that cannot read it fails, saying so)."""
    chosen = torch.tensor([-1], dtype=torch.int64)
    if comm.rank == 0 and resume:
        chosen[0] = checkpoint.round_of(Path(resume))
    with comm.tag("control"):
        comm.broadcast(chosen, 0)
    if chosen[0] < 0:
        return None
    path = checkpoint.path_for(out, int(chosen[0]))
    if not path.is_file():
        raise ValueError(f"rank {comm.rank} cannot read {path}, from which rank 0 resumes; put the run "
                         f"folder on storage that every node reads")
    return str(path)
