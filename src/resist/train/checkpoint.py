"""Checkpoints at round boundaries: whole or absent, the last K kept, ``weights_only`` loadable.

Everything random in a run (initialization, data order, augmentation, plans) is a pure function of
(seed, round, rank, step), so a checkpoint needs no RNG states: the round to resume at, the global
model with its BatchNorm statistics and any momentum that persists across rounds, the byte counters,
the best accuracy and the metrics so far are enough for an exact continuation.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_save

FORMAT = "resist-checkpoint"
VERSION = 1
_NAME = re.compile(r"round_(\d{6})\.pt$")


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(run_dir: Path, payload: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/round_NNNNNN.pt`` (NNNNNN = the round to resume at) and prune to ``keep``."""
    d = folder(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = path_for(run_dir, payload["round"])
    atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)
    for old in sorted(all_checkpoints(run_dir))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def path_for(run_dir: Path, round_: int) -> Path:
    """The checkpoint from which round ``round_`` starts."""
    return folder(run_dir) / f"round_{round_:06d}.pt"


def round_of(path: Path) -> int:
    """The round a checkpoint file resumes at, from its name."""
    found = _NAME.search(Path(path).name)
    if not found:
        raise ValueError(f"{path} is not named like a checkpoint (round_NNNNNN.pt)")
    return int(found.group(1))


def all_checkpoints(run_dir: Path) -> list[Path]:
    d = folder(run_dir)
    return sorted(p for p in d.glob("round_*.pt") if _NAME.search(p.name)) if d.is_dir() else []


def latest(run_dir: Path) -> Path | None:
    found = all_checkpoints(run_dir)
    return found[-1] if found else None


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint; ``ValueError`` with one line when it is damaged or not ours."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a torch file ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a resist checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {payload.get('version')}, this resist reads {VERSION}")
    return payload
