"""Tests import the package beside them (src/), not whatever copy is installed: with several checkouts
of the repository on one machine (worktrees), an editable install points at only one of them."""

import os
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parent / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
