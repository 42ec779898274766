"""Batches for elastic training, where workers die and join between rounds.

Non-elastic batches (:mod:`.sharding`) are a pure function of (seed, world size, rank, step); once the
membership changes between rounds, that function would skip or repeat examples. Here the group instead
keeps one small state, a :class:`DataCursor`, which travels with the quorum and in checkpoints, and deals
each round's batches from it. The rule, exactly:

* Each epoch's order is :func:`.sharding.epoch_permutation` (seed, epoch); batches name *positions* in it.
  Of an epoch, only its first ``usable = (n // batch_size) * batch_size`` positions are dealt; the
  ``n % batch_size`` remainder is dropped, as the non-elastic floor drops it.
* The cursor is ``(epoch, used)``: ``used`` are the merged, sorted half-open intervals of positions whose
  examples were trained on in committed rounds.
* :func:`deal` hands a round's members (in rank order; member ``i`` takes ``steps[i]`` local steps) their
  batches: member 0's steps first, then member 1's, ..., each batch the ``batch_size`` lowest positions
  neither used nor already dealt this round. Without holes member ``i`` gets a contiguous range. When
  fewer than ``batch_size`` positions of the epoch are left, dealing continues at position 0 of the next
  epoch, so a round may straddle two epochs (a batch never does: see below).
* :func:`commit` marks the positions of the members whose work the round kept as used; the positions of a
  lost member stay unused, and being the lowest unused ones, the next round deals them first. When an
  epoch is all used, the cursor moves on to the next one.

So within an epoch no example is trained on twice in committed work, and at the end of an epoch every one
of its ``usable`` positions was trained on exactly once, whatever the membership did.

*Positions past the epoch.* A round that straddles the end of epoch ``e`` and loses a member holding
positions of ``e`` leaves holes in ``e`` while positions of ``e + 1`` were already trained on. The cursor
keeps both: ``used`` is written in *stream positions*, the epochs' usable positions laid end to end from
the cursor's epoch (stream position ``p`` is position ``p % usable`` of epoch ``epoch + p // usable``).
Usually every interval lies below ``usable``, i.e. in the cursor's own epoch; only such holes push some
past it, until the next round fills the holes. Dealing "the lowest unused positions" is then one rule over
one line of positions, and the epoch's holes come first.

*No batch straddles two epochs.* Every batch takes ``batch_size`` positions and ``usable`` is a multiple of
``batch_size``, so the number of positions of any epoch used or dealt stays a multiple of ``batch_size``;
the lowest ``batch_size`` unused positions therefore lie in one epoch, and a batch is ``(epoch, positions)``.

*Epochs, against the non-elastic runs.* A non-elastic run of ``W`` workers trains
``steps_per_epoch(n, W, B) * W * B = W * floor(n / (W * B)) * B`` examples per (shard) epoch; here an epoch
is ``usable = floor(n / B) * B`` examples whatever the membership, since dropping the per-worker remainder
of today's shards would make the epoch's size depend on who is there. The two agree exactly when ``W``
divides ``n // B``; otherwise the elastic epoch is ``(n // B) % W`` batches (fewer than ``W``) longer. With
a constant membership of ``W`` workers taking ``s`` steps each, no loss and ``W | n // B``, an epoch is
``steps_per_epoch(n, W, B) / s`` rounds when ``s`` divides it, as today. :func:`examples_done` counts epochs
in these units (one pass of the group over the data, the ``shard`` epoch unit); a ``dataset`` epoch of a
nominal ``W`` workers is ``W`` of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..seeds import mix as _mix
from .augment import augment as _augment
from .augment import normalize
from .base import ImageArrays
from .sharding import epoch_permutation

Intervals = tuple[tuple[int, int], ...]
"""Merged, sorted, non-empty half-open intervals ``(start, stop)``."""


def usable_positions(n: int, batch_size: int) -> int:
    """Positions of an epoch's order that are dealt: ``floor(n / batch_size) * batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    usable = (n // batch_size) * batch_size
    if usable == 0:
        raise ValueError(f"dataset of {n} examples is smaller than one batch of {batch_size}")
    return usable


# ------------------------------------------------------------------------------------------ intervals

def _merge(intervals) -> Intervals:
    """Sort and merge (overlapping or touching) intervals, dropping empty ones."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def _lowest_free(taken: Intervals, count: int) -> Intervals:
    """The ``count`` lowest non-negative positions outside ``taken`` (the stream has no end, so there
    are always enough)."""
    out, at = [], 0
    for a, b in taken + ((None, None),):  # a sentinel: the gap after the last interval is unbounded
        stop = at + count if a is None else min(a, at + count)
        if stop > at:
            out.append((at, stop))
            count -= stop - at
        if count == 0:
            break
        at = b
    return tuple(out)


def _size(intervals: Intervals) -> int:
    return sum(b - a for a, b in intervals)


def _slice(intervals: Intervals, start: int, stop: int) -> Intervals:
    """The positions of ``intervals`` (in order) from the ``start``-th to before the ``stop``-th."""
    out, seen = [], 0
    for a, b in intervals:
        lo, hi = max(a, a + start - seen), min(b, a + stop - seen)
        if hi > lo:
            out.append((lo, hi))
        seen += b - a
    return tuple(out)


def _check_intervals(intervals: Intervals, what: str) -> None:
    prev = -1
    for iv in intervals:
        if len(iv) != 2 or not all(isinstance(v, int) for v in iv):
            raise ValueError(f"{what} must be (start, stop) pairs of ints, got {iv!r}")
        a, b = iv
        if not (0 <= a < b) or a <= prev:
            raise ValueError(f"{what} must be sorted, merged, non-empty intervals of positions >= 0, "
                             f"got {intervals!r}")
        prev = b


# ------------------------------------------------------------------------------------------- cursor

@dataclass(frozen=True)
class DataCursor:
    """Where the group is in the data: the current ``epoch`` and the ``used`` stream positions (merged,
    sorted half-open intervals; see the module docstring: below ``usable`` they are this epoch's)."""

    epoch: int = 0
    used: Intervals = ()

    def __post_init__(self):
        if not isinstance(self.epoch, int) or self.epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {self.epoch!r}")
        used = tuple(tuple(iv) for iv in self.used)  # lists from JSON become tuples
        _check_intervals(used, "used")
        object.__setattr__(self, "used", used)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for the quorum's data and checkpoints); :meth:`from_dict` reads it back."""
        return {"epoch": self.epoch, "used": [[a, b] for a, b in self.used]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataCursor":
        return cls(int(d["epoch"]), tuple((int(a), int(b)) for a, b in d["used"]))


@dataclass(frozen=True)
class Deal:
    """One round's batches: member ``i``'s stream positions ``members[i]`` (intervals), walked in
    batches of ``batch_size`` by :meth:`batch`. ``cursor`` is the cursor it was dealt from, which
    :func:`commit` checks."""

    cursor: DataCursor
    usable: int
    batch_size: int
    steps: tuple[int, ...]
    members: tuple[Intervals, ...]

    def batch(self, member: int, step: int) -> tuple[int, tuple[int, ...]]:
        """(epoch, positions in that epoch's order) of ``member``'s local ``step``."""
        if not 0 <= step < self.steps[member]:
            raise IndexError(f"member {member} takes {self.steps[member]} steps, not step {step}")
        part = _slice(self.members[member], step * self.batch_size, (step + 1) * self.batch_size)
        epoch = part[0][0] // self.usable
        if (part[-1][1] - 1) // self.usable != epoch:  # cannot happen for cursors made by deal/commit
            raise ValueError(f"batch {part} straddles an epoch: the cursor was not made with this "
                             f"n and batch size")
        base = epoch * self.usable
        return self.cursor.epoch + epoch, tuple(p - base for a, b in part for p in range(a, b))

    def batches(self, member: int) -> list[tuple[int, tuple[int, ...]]]:
        """All of ``member``'s batches, in step order."""
        return [self.batch(member, k) for k in range(self.steps[member])]


def deal(cursor: DataCursor, n: int, batch_size: int, steps: Sequence[int]) -> Deal:
    """A round's batches for its members in rank order, member ``i`` taking ``steps[i]`` local steps:
    the lowest unused positions, member 0's steps first (the rule of the module docstring)."""
    usable = usable_positions(n, batch_size)
    steps = tuple(int(s) for s in steps)
    if any(s < 0 for s in steps):
        raise ValueError(f"steps must be >= 0, got {steps}")
    # Taking the lowest free positions member by member is the same as taking them all at once and
    # cutting that run in order: each member's share is its slice of the round's positions.
    dealt = _lowest_free(cursor.used, sum(steps) * batch_size)
    members, at = [], 0
    for s in steps:
        members.append(_slice(dealt, at, at + s * batch_size))
        at += s * batch_size
    return Deal(cursor, usable, batch_size, steps, tuple(members))


def commit(cursor: DataCursor, deal: Deal, kept: Sequence[bool], n: int, batch_size: int) -> DataCursor:
    """The cursor after a round: the positions of the members whose work was ``kept`` become used, a
    lost member's stay free (so the next :func:`deal` hands them out first), and every epoch now all
    used is left behind."""
    usable = usable_positions(n, batch_size)
    if deal.cursor != cursor or deal.usable != usable or deal.batch_size != batch_size:
        raise ValueError("this deal was not dealt from this cursor with this n and batch size")
    if len(kept) != len(deal.members):
        raise ValueError(f"kept has {len(kept)} entries for a deal of {len(deal.members)} members")
    used = _merge(cursor.used + tuple(iv for ivs, k in zip(deal.members, kept) if k for iv in ivs))
    epoch = cursor.epoch
    # Only a full epoch moves the cursor: then used starts with (0, m * usable) for some m >= 1.
    if used and used[0][0] == 0 and used[0][1] >= usable:
        m = used[0][1] // usable
        shift = m * usable
        epoch += m
        used = tuple((max(a - shift, 0), b - shift) for a, b in used if b > shift)
    return DataCursor(epoch, used)


def examples_done(cursor: DataCursor, n: int, batch_size: int) -> float:
    """Progress in epochs: ``epoch + used / usable`` (positions of later epochs count too), for the
    learning-rate schedule and the end of training."""
    return cursor.epoch + _size(cursor.used) / usable_positions(n, batch_size)


# -------------------------------------------------------------------------------------------- batches

def elastic_generator(seed: int, epoch: int, first: int) -> torch.Generator:
    """A CPU generator for augmenting the batch that starts at position ``first`` of ``epoch``: the same
    positions give the same batch whichever worker trains them."""
    return torch.Generator().manual_seed(_mix(0xE1A, seed, epoch, first))  # salt: apart from the others


class ElasticBatches:
    """Training batches by position over in-memory images: ``.batch_at(epoch, positions)`` -> (x (B, 3,
    H, W) float32, y (B,) int64), with :class:`.sharding.BatchStream`'s augmentation (random crop with
    black padding and flip, in pixel space) and normalization."""

    _KEEP = 2  # a round straddles at most two epochs: keep both permutations

    def __init__(self, arrays: ImageArrays, mean: Sequence[float], std: Sequence[float], seed: int,
                 augment: bool = True):
        self.arrays, self.mean, self.std = arrays, tuple(mean), tuple(std)
        self.seed, self.augment = seed, augment
        self._perms: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        """``epoch``'s order of the examples (cached: a randperm of the whole set per batch would cost
        more than the batch)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = epoch_permutation(len(self.arrays.y), self.seed, epoch)
            self._perms[epoch] = perm
            while len(self._perms) > self._KEEP:
                del self._perms[min(self._perms)]
        return perm

    def batch_at(self, epoch: int, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        if len(positions) == 0:
            raise ValueError("a batch needs at least one position")
        idx = self.permutation(epoch)[torch.as_tensor(list(positions), dtype=torch.int64)]
        x = self.arrays.x[idx].permute(0, 3, 1, 2)  # (B, 3, H, W) uint8: augment pads with black pixels
        if self.augment:
            x = _augment(x, elastic_generator(self.seed, epoch, int(positions[0])))
        return normalize(x, self.mean, self.std), self.arrays.y[idx]

    def close(self) -> None:
        """Nothing to stop: the images are in memory."""
