"""What the members of a new quorum do with the round that ends (elastic training): a pure function.

Pure Python, no torch and no communicator, like :mod:`.routing`: every member derives the same
decision from the same quorum (the coordinator hands all of them every member's :class:`Report`), so
no message is needed to agree on it, and a test can check it on its own.

The rule (docs/elastic.md says why):

- **Who contributes.** The members that trained round ``r`` (their report says so) contribute their copy
  of what they trained; a member that is new, or came back after it was lost (another incarnation),
  contributes nothing and receives what its next sub-network needs.
- **A lost worker's blocks.** A block that some surviving member trained keeps the survivors' average.
  A block that only lost workers trained restarts from its last committed state (the value every
  holder started round ``r`` from), which a surviving *keeper* holds: the member that sent it to its
  holder at the last synchronization, or, where no other member had that value, the member its holder
  sent a backup to (:func:`keepers`). So at most one round of that block's updates is lost.
- **Shared layers** are averaged over the members that trained the round (joiners add zeros and are
  not counted).
- A loss that no survivor can cover (a block whose holders and keepers were all lost) cannot be
  recovered: :class:`Unrecoverable` says so, and the run resumes from its last checkpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

#: Who holds each candidate block, in rank order.
Holding = Mapping[int, tuple[int, ...]]


class Unrecoverable(RuntimeError):
    """The quorum cannot rebuild the round's state (every copy of some block was lost)."""


class Refused(ValueError):
    """This worker cannot join this run (another config, or its name is taken)."""


class Split(ValueError):
    """A fresh quorum whose members run different configs, none of them a majority: refusing either side
    would be a coin toss (the workers of the run may not all have asked yet), so the quorum forms again."""


@dataclass(frozen=True)
class Report:
    """What one worker tells the coordinator at a round boundary (a quorum's per-member data).

    ``token``: this process's incarnation (random per start), so that a worker restarted under the same
    name is known to be new. ``digest``: the run's config (a worker of another run or config is refused,
    never averaged in). ``round``: the round this worker trained (``holds`` its blocks in it), or, fresh,
    -1. ``keeps``: blocks whose last committed state it holds for others. ``cursor``: where the data of
    the epoch stood at the start of that round (the survivors' is the run's). ``members``: the workers of
    the round it trained, in rank order (to report who was lost)."""

    token: str
    digest: str
    round: int = -1
    holds: tuple[int, ...] = ()
    keeps: tuple[int, ...] = ()
    cursor: dict[str, Any] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    progress: dict[str, Any] = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        return self.round < 0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        return cls(token=str(d["token"]), digest=str(d["digest"]), round=int(d.get("round", -1)),
                   holds=tuple(int(b) for b in d.get("holds", ())), keeps=tuple(int(b) for b in d.get("keeps", ())),
                   cursor=dict(d.get("cursor", {})), members=tuple(d.get("members", ())),
                   progress=dict(d.get("progress", {})))


@dataclass(frozen=True)
class Decision:
    """What the members of a quorum do next, the same on every member.

    ``start``: everyone is fresh: the run starts at round 0 (every member initializes from the seed).
    Otherwise ``round`` is the round whose synchronization runs now, ``cur`` who contributes each block
    (new ranks), ``restored`` which keeper stands in for each block no survivor trained, ``contributors``
    the ranks that trained the round (the shared layers are their average), ``joiners`` ranks that
    contributed nothing, ``lost`` the workers of the round that are gone (by name; one that came back is
    both lost and a joiner)."""

    members: tuple[str, ...]
    start: bool
    round: int = -1
    cur: dict[int, tuple[int, ...]] = field(default_factory=dict)
    restored: dict[int, int] = field(default_factory=dict)
    contributors: tuple[int, ...] = ()
    joiners: tuple[int, ...] = ()
    lost: tuple[str, ...] = ()
    cursor: dict[str, Any] = field(default_factory=dict)
    previous: tuple[str, ...] = ()
    """The workers of the round that ends, in its rank order."""


def reference_digest(reports: Sequence[Report]) -> str | None:
    """The config a quorum's members must share: that of the lowest-ranked member that trained the round;
    at a fresh start, that of a strict majority of the members, or None where no config has one (two
    workers that disagree, the first to ask being the odd one out, must not refuse the right one)."""
    trained = [r.digest for r in reports if not r.fresh]
    if trained:
        return trained[0]
    digest, n = Counter(r.digest for r in reports).most_common(1)[0]
    return digest if 2 * n > len(reports) else None


def decide(members: Sequence[str], reports: Sequence[Report], candidates: Sequence[int]) -> Decision:
    """The decision of a quorum of ``members`` (sorted; rank = index) that reported ``reports``.

    Raises :class:`Refused` naming a member whose config differs from the others' (the lowest-ranked
    member that trained the round sets the reference; at a fresh start, the majority),
    :class:`Split` at a fresh start with no majority config, and :class:`Unrecoverable` when some block
    has neither a surviving holder nor a surviving keeper."""
    members = tuple(members)
    trained = [i for i, rep in enumerate(reports) if not rep.fresh]
    ref = reference_digest(reports)
    if ref is None:
        raise Split(f"workers {', '.join(members)} run different configs and none is a majority; start every "
                    f"worker with the same command")
    foreign = [members[i] for i, rep in enumerate(reports) if rep.digest != ref]
    if foreign:
        raise Refused(f"worker {foreign[0]} runs another config than this run's (digest {ref[:12]}); "
                      f"start it with the same command as the others")
    if not trained:
        return Decision(members, start=True)
    rounds = {reports[i].round for i in trained}
    if len(rounds) != 1:
        raise Unrecoverable(f"the members report different rounds ({sorted(rounds)}): a synchronization "
                            f"committed on some and not on others; resume from the last checkpoint")
    r = rounds.pop()
    lead = reports[trained[0]]
    cur = {b: tuple(i for i in trained if b in reports[i].holds) for b in candidates}
    restored = {}
    for b in candidates:
        if cur[b]:
            continue
        keepers = [i for i in trained if b in reports[i].keeps]
        if not keepers:
            raise Unrecoverable(f"block {b} was held only by workers that are gone, and no survivor kept its "
                                f"last committed state; resume from the last checkpoint")
        restored[b] = keepers[0]
        cur[b] = (keepers[0],)
    survivors = {members[i]: reports[i].token for i in trained}
    lost = tuple(name for name in lead.members if name not in survivors)
    joiners = tuple(i for i in range(len(members)) if reports[i].fresh)
    return Decision(members, start=False, round=r, cur=cur, restored=restored, contributors=tuple(trained),
                    joiners=joiners, lost=lost, cursor=dict(lead.cursor), previous=tuple(lead.members))


def keepers(cur: Holding, nxt: Holding, world_size: int) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    """Who keeps each block's committed state after a synchronization from ``cur`` to ``nxt``, so that
    losing any one worker in the next round loses at most that round of its blocks' updates.

    A block with several next holders needs no keeper (each holds the value). A block with one next
    holder ``h``: if one other worker trained it alone, what that worker sent *is* the committed value,
    so it keeps its copy (no extra bytes: "kept by the worker that sent it"). Otherwise (``h`` kept it,
    or its value is an average ``h`` computed) ``h`` sends a backup of the committed value to the next
    rank after it. Returns ``(kept, backups)``: ``kept[b]`` the rank that keeps what it sent,
    ``backups[b] = (h, dst)``. Nothing is kept by a world of one (nobody else could use it)."""
    kept: dict[int, int] = {}
    backups: dict[int, tuple[int, int]] = {}
    if world_size < 2:
        return kept, backups
    for b, goes_to in nxt.items():
        if len(goes_to) != 1:
            continue
        h = goes_to[0]
        held_by = cur[b]
        if len(held_by) == 1 and held_by[0] != h:
            kept[b] = held_by[0]
        else:
            backups[b] = (h, (h + 1) % world_size)
    return kept, backups
