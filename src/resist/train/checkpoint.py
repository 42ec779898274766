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


# What every checkpoint holds, with its type; "epoch" and "rank_state" came later and are optional.
_KEYS = {"round": int, "config": dict, "model": dict, "progress": dict, "metrics": list, "bytes": list}
_PROGRESS = ("parallel_s", "elapsed_s", "best", "best_time")


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint; ``ValueError`` with one line when it is damaged or not ours."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as e:  # the weights-only loader met a Python object it may not build
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        raise ValueError(f"{path} is not a resist checkpoint: it holds {what}, which resist does not load, "
                         f"since unpickling can run any code") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged or not a torch file ({_first_sentence(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a resist checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {payload.get('version')}, this resist reads {VERSION}")
    _check_contents(path, payload)
    return payload


def _first_sentence(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return re.split(r"(?<=[.!?]) ", text, maxsplit=1)[0].rstrip(".")


def _check_contents(path: Path, payload: dict[str, Any]) -> None:
    """A checkpoint with the format marker whose contents are not whole (another tool's, or edited)."""
    from ..config import Config

    missing = [k for k in _KEYS if k not in payload] + \
              [f"progress.{k}" for k in _PROGRESS if isinstance(payload.get("progress"), dict) and k not in payload["progress"]]
    wrong = [k for k, kind in _KEYS.items() if k in payload and not isinstance(payload[k], kind)]
    if isinstance(payload.get("model"), dict) and not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        wrong.append("model")
    if isinstance(payload.get("bytes"), list) and not all(isinstance(b, dict) for b in payload["bytes"]):
        wrong.append("bytes")
    if "rank_state" in payload and not (isinstance(payload["rank_state"], list)
                                        and all(isinstance(r, dict) for r in payload["rank_state"])):
        wrong.append("rank_state")
    problem = (f"lacks {', '.join(missing)}" if missing else
               f"has {', '.join(wrong)} of the wrong kind" if wrong else None)
    if problem is None:
        try:
            Config.from_dict(payload["config"])
        except (ValueError, TypeError, AttributeError) as e:
            problem = f"holds a config this resist cannot read ({_first_sentence(e)})"
    if problem:
        raise ValueError(f"checkpoint {path} {problem}; it is not whole: resume from an earlier checkpoint "
                         f"(move this one aside) or start a new run folder")
