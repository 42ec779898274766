"""Files that are either whole or absent: write to a temporary file beside the target, fsync it, rename,
then fsync the directory (so that the rename survives a crash too)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """A write failed for lack of space (or quota) on its device; the message names the folder."""

    def __str__(self) -> str:
        return str(self.strerror)


class _Sink:
    """The file as the writer sees it, keeping the error of a failed write: ``torch.save`` reports a
    full disk only as "unexpected pos" (its own RuntimeError)."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _no_space(exc: BaseException | None, sink: _Sink | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return sink is not None and sink.error is not None and sink.error.errno in NO_SPACE


def _full(path: Path) -> NoSpaceError:
    return NoSpaceError(errno.ENOSPC, f"no space left on the device at {path.parent} (writing {path.name}, which "
                                      f"was not written; the files already there are intact)")


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.errno in NO_SPACE:  # no inode left
            raise _full(path) from None
        raise
    sink = None
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _no_space(e, sink):
            raise _full(path) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: until the directory is synced, a crash can lose the new entry."""
    if os.name != "posix":  # Windows cannot open a directory for fsync; its rename is journaled
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def printable(text: str) -> str:
    """``text`` with the bytes of file names that are not UTF-8 (which Python holds as surrogates) shown
    as ``\\xNN``: writing a surrogate to a UTF-8 stream would fail with an error that names no file."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file."""
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)
