"""metrics.jsonl (the source of truth: one line per round), a tqdm bar on a terminal, and one log
line per evaluation."""

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
            from tqdm import tqdm

            self.bar = tqdm(total=progress_total, unit="round", dynamic_ncols=True, leave=False)

    def write(self, record: dict[str, Any], summary: bool = False) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}")
        if summary:
            extra = "".join(f"  {name} {v['acc']:6.2f}%" for name, v in record.get("extra_test", {}).items())
            line = (f"round {record['round'] + 1:>5}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
                    f"test {record['test_acc']:6.2f}% (top-5 {record['test_top5']:6.2f}%)  best {record['best_acc']:6.2f}%"
                    f"{extra}  time {record['time_s']:8.1f}s  sent/worker {human_bytes(max(record['sent_bytes']))}")
            if self.bar is not None:
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
