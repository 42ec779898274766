"""One way to derive seeds: every random stream of a run is a pure function of integers such as
(seed, epoch) or (seed, rank, step), combined here, never through Python's salted ``hash``."""

from __future__ import annotations

_MOD = 2**63


def mix(*values: int) -> int:
    """Combine integers into one 63-bit seed (a polynomial hash; order matters)."""
    h = 0
    for v in values:
        h = (h * 1_000_003 + int(v)) % _MOD
    return h
