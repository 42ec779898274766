"""Who may write a run folder, and what in it a run may replace.

A run folder is marked by ``.resist-run``, which a run creates before writing anything else there.
The same file is the folder's lock: the run that owns the folder holds an exclusive ``flock`` on it
until it ends (the kernel drops it when the process dies, however it dies), and writes its pid and
host into it so that a refused run can say who holds the folder. Folders written before the marker
existed count as run folders when their ``config.json`` is a resist config and a run's metrics,
summary or checkpoints lie beside it.

A run writes only the names in :data:`RUN_FILES`, ``member<N>.pt``, TensorBoard's
``events.out.tfevents.*`` and ``checkpoints/round_NNNNNN.pt`` (each but the event files through a
temporary ``.NAME.*.tmp`` beside it). A fresh run therefore refuses a folder where any of those names
exist unless the folder is a run folder, and even then only with ``force``; with it,
the run deletes exactly those names and leaves everything else in the folder alone.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger("resist")

MARKER = ".resist-run"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "model.pt", "classes.json", "split.json")
CHECKPOINTS = "checkpoints"
_MEMBER = re.compile(r"member\d+\.pt$")
# TensorBoard's event files (``--log tensorboard``): events.out.tfevents.<time>.<host>[.<pid>.<n>].
_EVENTS = re.compile(r"events\.out\.tfevents\..+")
_CHECKPOINT = re.compile(r"round_\d{6}\.pt$")
# Temporary files of resist.io's atomic writes: ".<target name>.<random>.tmp".
_PARTIAL = re.compile(r"\.(.+)\.[^.]+\.tmp$")
DEFAULT_OUT = "runs/latest"
"""The config's default run folder. From the command line it stands for a new folder
``runs/NAME-YYYYmmdd-HHMMSS`` with ``runs/latest`` a link to it (:func:`new_default_folder`)."""


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says what to do instead."""


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or bool(_MEMBER.fullmatch(name) or _EVENTS.fullmatch(name))


def run_entries(folder: Path) -> list[Path]:
    """What a run wrote in ``folder`` (or would overwrite there), the marker aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _is_run_file(p.name)]
    if (folder / CHECKPOINTS).exists():
        found.append(folder / CHECKPOINTS)
    return sorted(found)


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by a resist run (see the module's docstring)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return True
    from .config import Config  # a legacy run folder: no marker, but a run's own config beside its output

    try:
        Config.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return any((folder / n).is_file() for n in ("metrics.jsonl", "summary.json")) or \
        any(_CHECKPOINT.fullmatch(p.name) for p in (folder / CHECKPOINTS).glob("round_*.pt"))


def _describe_run(folder: Path) -> str:
    if (folder / "summary.json").is_file():
        return "a finished run"
    rounds = sorted(p.name for p in (folder / CHECKPOINTS).glob("round_*.pt") if _CHECKPOINT.fullmatch(p.name))
    return f"an unfinished run, last checkpoint {rounds[-1]}" if rounds else "an unfinished run without checkpoints"


def check_out(folder: Path) -> Path:
    """``folder`` if it can be a run folder at all: not empty, not a file."""
    if not str(folder).strip():
        raise RunDirError("the run folder (--out) is empty; name one, e.g. --out runs/r1")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--out {folder} is a file, not a folder; choose another --out")
    return folder


def check_fresh(folder: Path, force: bool = False, resumable: bool = True, _locked: bool = False) -> None:
    """Raise :class:`RunDirError` unless a fresh run may write ``folder`` (nothing is changed here).

    ``resumable``: whether the refusal may point at ``--resume`` (not for the demo's folders)."""
    folder = check_out(folder)
    if not _locked:  # a look at the lock from this process would collide with its own lock
        check_not_in_use(folder)
    present = run_entries(folder)
    if not present:
        return
    if not is_run_folder(folder):
        names = ", ".join(p.name for p in present)
        raise RunDirError(f"{folder} holds {names}, which no resist run wrote (there is no {MARKER}); a run "
                          f"would overwrite them, so choose another --out")
    if not force:
        options = f"continue it with --resume {folder}, " if resumable else ""
        raise RunDirError(f"{folder} already holds {_describe_run(folder)}; {options}replace it with --force, "
                          f"or choose another --out")


def clear_run(folder: Path) -> list[Path]:
    """Delete what a run wrote in ``folder`` (``--force``); every other file there stays."""
    removed = [p for p in run_entries(folder) if p.is_file()]
    ckpts = Path(folder) / CHECKPOINTS
    if ckpts.is_dir():
        removed += [p for p in ckpts.iterdir() if _CHECKPOINT.fullmatch(p.name) or _partial_of_run(p)]
    for p in removed:
        p.unlink(missing_ok=True)
    if ckpts.is_dir() and not any(ckpts.iterdir()):
        ckpts.rmdir()
    return removed


def _partial_of_run(path: Path) -> bool:
    found = _PARTIAL.fullmatch(path.name)
    if not found:
        return False
    target = found.group(1)
    return _CHECKPOINT.fullmatch(target) is not None if path.parent.name == CHECKPOINTS else _is_run_file(target)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that a crash or a kill interrupted (only the owner of the
    folder may call this: a live run's write in progress looks the same)."""
    folder = Path(folder)
    found = [p for d in (folder, folder / CHECKPOINTS) if d.is_dir() for p in d.glob(".*.tmp") if _partial_of_run(p)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


class RunLock:
    """This process's ownership of a run folder; :meth:`release` (or the process's end) gives it up."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor of the file drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(marker: Path) -> str:
    try:
        info = json.loads(marker.read_text())
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def check_not_in_use(folder: Path) -> None:
    """Raise :class:`RunDirError` if a live run holds ``folder`` (a look only: nothing is locked after)."""
    import fcntl

    marker = Path(folder) / MARKER
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        return  # no marker, so no owner
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise RunDirError(_in_use(folder)) from None
    finally:
        os.close(fd)


def _in_use(folder: Path) -> str:
    return (f"{folder} is in use by another resist run ({_holder(Path(folder) / MARKER)}); wait for it to end "
            f"or choose another --out")


def lock(folder: Path) -> RunLock:
    """Take ``folder`` (created if need be) for this process, or raise :class:`RunDirError` naming the
    process that holds it."""
    import fcntl

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / MARKER
        fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write the run folder {folder}: {e.strerror or e}") from None
    for attempt in range(5):  # a few tries: another run's look (check_not_in_use) holds it for an instant
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise RunDirError(f"cannot lock the run folder {folder} ({e.strerror or e})") from None
            if attempt == 4:
                os.close(fd)
                raise RunDirError(_in_use(folder)) from None
            time.sleep(0.05)
    # Rewritten in place, not replaced: the lock belongs to this file's inode.
    info = json.dumps({"resist_run": 1, "pid": os.getpid(), "host": socket.gethostname(),
                       "since": datetime.datetime.now().isoformat(timespec="seconds")}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode(), 0)
    return RunLock(folder, fd)


def claim(folder: Path, fresh: bool, force: bool = False) -> RunLock:
    """Own ``folder`` for a run: checked, locked, and for a fresh run emptied of a previous run's files
    (``force``) and of the temporary files an interrupted write left behind."""
    if fresh:
        check_fresh(folder, force)  # before the marker is created: a foreign folder stays as it was
    else:
        check_out(folder)
    held = lock(folder)
    try:
        if fresh:
            check_fresh(folder, force, _locked=True)  # again, now that no other run can be writing
            removed = clear_run(folder) if force else []
            if removed:
                log.info("--force: removed the previous run's %d file(s) from %s", len(removed), folder)
        remove_partial_files(folder)
    except BaseException:
        held.release()
        raise
    return held


def new_default_folder(name: str, root: Path = Path("runs")) -> Path:
    """A new, empty folder ``root/NAME-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... if taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = root / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            folder.mkdir()  # exclusive: two runs started in the same second get two folders
            return folder
        except FileExistsError:
            continue
    raise RunDirError(f"cannot find a free folder name for {name} in {root}; give --out")


def _point_link(link: Path, target: str | None) -> bool:
    """Make ``link`` a symbolic link to ``target`` (None: remove it), replacing it at once; False where
    ``link`` is something else than a link, or links cannot be made here."""
    if link.exists() and not link.is_symlink():
        return False
    try:
        if target is None:
            link.unlink(missing_ok=True)
            return True
        tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def fresh_default(out: str, name: str, resume: bool, auto_resume: bool, torchrun: bool) -> Iterator[str]:
    """``out``, or for a fresh run with the default (:data:`DEFAULT_OUT`) a new folder of its own
    (:func:`new_default_folder`) with ``runs/latest`` linked to it, so that a run started without
    ``--out`` never meets the previous one. If the run fails before writing anything, that folder goes
    again and the link points where it did."""
    if out != DEFAULT_OUT or resume:
        yield out
        return
    if auto_resume or torchrun:  # every start (every rank, every restart) must name the same folder
        raise RunDirError(f"{'--auto-resume' if auto_resume else 'a run under torchrun'} needs the run folder "
                          f"named: give --out")
    latest = Path(DEFAULT_OUT)
    made_root = not latest.parent.exists()
    folder = new_default_folder(name, latest.parent)
    before = os.readlink(latest) if latest.is_symlink() else None
    linked = _point_link(latest, folder.name)  # the run names its folder itself, when it starts and ends
    try:
        yield str(folder)
    except BaseException:
        if {p.name for p in folder.iterdir()} <= {MARKER}:
            (folder / MARKER).unlink(missing_ok=True)
            folder.rmdir()
            if linked:
                _point_link(latest, before)
            if made_root and not any(latest.parent.iterdir()):
                latest.parent.rmdir()
        raise
