"""metrics.jsonl (the source of truth: one line per round) and progress on rank 0: on a terminal a tqdm
bar that moves every round and a log line per evaluation, elsewhere (a log file, a pipe) a log line per
round."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("resist")


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


class MetricsWriter:
    def __init__(self, path: Path, progress_total: int | None = None) -> None:
        self.path = Path(path)
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
        self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
