"""Who sends which block to whom when a ResIST round ends (paper §2.5, Fig. 3): a pure function.

Pure Python, no torch and no communicator: a route is a function of (this round's holders, next round's
holders, this rank), so every rank derives its own side of the same exchange with no communication,
and a test can check all ranks' routes against each other without running any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..plan import Plan

#: Who holds each candidate block in a round, in rank order (a plan's, or everyone's in a whole round).
Holding = Mapping[int, tuple[int, ...]]


def holding(plan: Plan) -> dict[int, tuple[int, ...]]:
    """The holders of every candidate block in ``plan``."""
    return {b: plan.holders(b) for b in plan.candidates}


@dataclass(frozen=True)
class Receive:
    """Block ``block`` from rank ``src``. ``direct``: its only holder's copy is already the average, so
    it lands in this rank's bucket itself; otherwise in a buffer of its own, for an average."""

    src: int
    block: int
    direct: bool


@dataclass(frozen=True)
class Average:
    """Block ``block`` becomes the mean of its ``holders``' copies (rank order, this rank's own included
    if it is one): a block several sub-ResNets trained (min-depth sharing, §2.2)."""

    block: int
    holders: tuple[int, ...]


@dataclass(frozen=True)
class Route:
    """One rank's part in the synchronization at the end of a round; every tuple in candidate order.

    ``all_reduced``: blocks every rank holds, averaged by an all-reduce rather than sent. ``stepped``:
    the other blocks this rank trained (an outer optimizer steps them before they travel). ``sends``:
    ``(dst, block)``, this rank's copy to each *other* next holder. ``receives`` and ``averages``: what
    this rank, a next holder, takes in and how it combines it. ``reencoded``: blocks this rank alone
    trained and keeps, that also go to others; under a codec it takes its own copy as they decode it, so
    that all next holders have the same bits. ``allocated`` / ``released``: blocks it starts / stops
    holding."""

    all_reduced: tuple[int, ...]
    stepped: tuple[int, ...]
    sends: tuple[tuple[int, int], ...]
    receives: tuple[Receive, ...]
    averages: tuple[Average, ...]
    reencoded: tuple[int, ...]
    allocated: tuple[int, ...]
    released: tuple[int, ...]


def route(cur: Holding, nxt: Holding, me: int, world_size: int) -> Route:
    """This rank's route from holders ``cur`` (the round that ends) to ``nxt`` (the next round's).

    A block kept by the same sole holder moves nothing; a block with one holder goes straight into its
    next holders' buckets; a block with several is averaged by each next holder in rank order."""
    everyone = tuple(range(world_size))
    out: dict[str, list] = {k: [] for k in Route.__dataclass_fields__}
    for b in cur:
        held_by, goes_to = cur[b], nxt[b]
        if me in held_by and me not in goes_to:
            out["released"].append(b)
        if held_by == everyone:
            out["all_reduced"].append(b)
            continue
        if me in held_by:
            out["stepped"].append(b)
            out["sends"] += [(dst, b) for dst in goes_to if dst != me]
        if me not in goes_to:
            continue
        if held_by == (me,):
            if goes_to != (me,):
                out["reencoded"].append(b)
            continue
        if me not in held_by:
            out["allocated"].append(b)
        if len(held_by) == 1:
            out["receives"].append(Receive(held_by[0], b, direct=True))
        else:
            out["receives"] += [Receive(h, b, direct=False) for h in held_by if h != me]
            out["averages"].append(Average(b, held_by))
    return Route(**{k: tuple(v) for k, v in out.items()})
