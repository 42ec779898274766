"""metrics.jsonl (the source of truth: one line per round) and progress on rank 0: on a terminal a tqdm
bar that moves every round and a log line per evaluation, elsewhere (a log file, a pipe) a log line per
round. With ``--log tensorboard`` each row's numbers also go to TensorBoard event files beside it."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("resist")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def check_loggers(loggers: Sequence[str]) -> None:
    """One line (``ValueError``) when a logger asked for cannot run here: its package is missing."""
    if "tensorboard" in loggers and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--log tensorboard needs the tensorboard package, which is not installed: "
                         "pip install 'resist[tensorboard]' (or pip install tensorboard), or drop --log tensorboard")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics row's numbers as TensorBoard tags: every number but the round (the step TensorBoard
    plots against); a per-worker list (bytes sent, received) as its largest and its total."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "round" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            out[f"{key}/max"], out[f"{key}/total"] = float(max(value)), float(sum(value))
    return out


class TensorBoardLog:
    """TensorBoard event files in the run folder, one scalar per number of each metrics row, at its round.
    A resumed run drops what the first run wrote from its first round on (as metrics.jsonl does)."""

    def __init__(self, folder: Path, first_round: int = 0) -> None:
        check_loggers(("tensorboard",))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_round or None)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["round"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsWriter:
    def __init__(self, path: Path, progress_total: int | None = None, loggers: Sequence[str] = ("jsonl",),
                 first_round: int = 0) -> None:
        self.path = Path(path)
        self.tensorboard = TensorBoardLog(self.path.parent, first_round) if "tensorboard" in loggers else None
        self.file = self.path.open("a", encoding="utf-8")
        self.bar = None
        if progress_total and sys.stderr.isatty():
            import shutil

            from tqdm import tqdm

            # A pseudo-terminal may report 0 x 0 (script, some CI runners): tqdm then sizes its bar to nothing
            # and hides it as below the last row. shutil falls back to a usable size there.
            size = shutil.get_terminal_size((100, 24))
            self.bar = tqdm(total=progress_total, unit="round", ncols=size.columns, nrows=size.lines, leave=False)

    def write(self, record: dict[str, Any], evaluation: str | None = None) -> None:
        """Append ``record``; ``evaluation`` (the task's words for the scores in it) joins its log line."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.write(record)
        line = (f"round {record['round'] + 1:>5}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
                f"{evaluation + '  ' if evaluation else ''}time {record['time_s']:8.1f}s  "
                f"sent/worker {human_bytes(max(record['sent_bytes']))}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}")
            if evaluation is not None:
                self.bar.write(line)
        else:
            log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
