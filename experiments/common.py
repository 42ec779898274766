"""What every benchmark records about the library it measured (shared by the scripts in bench/)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results"
# The library beside these scripts is the one measured, installed or not.
sys.path.insert(0, str(ROOT / "src"))


def git(*args: str) -> str:
    """Read-only git query about the library measured (empty if git is unavailable)."""
    import subprocess

    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def library_state() -> dict:
    """Which library is measured: the commit, the tree of src/ in it (what a later commit that leaves
    src/ alone keeps), and a fingerprint of uncommitted changes under src/."""
    import hashlib

    diff = git("diff", "HEAD", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_tree": git("rev-parse", "HEAD:src"),
            "src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:10] if diff else None}


def describe_library(start: dict, end: dict) -> str:
    text = start["commit"][:10] or "?"
    if start["src_diff_sha1"]:
        text += f" plus uncommitted changes in src/ (diff sha1 {start['src_diff_sha1']})"
    if (end["src_tree"], end["src_diff_sha1"]) != (start["src_tree"], start["src_diff_sha1"]):
        text += " -- the library changed during the run, results may mix versions"
    return text
