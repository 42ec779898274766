"""Files that are either whole or absent: write to a temporary file beside the target, fsync it, rename,
then fsync the directory (so that the rename survives a crash too)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
