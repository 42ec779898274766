"""How a bucket's state lies in its flat buffers: written down here once, asked by every user.

A bucket (``"shared"``, or one partitioned block) travels as one flat buffer per dtype (paper §2.5:
shared layers all-reduced, each block sent to its next holders). The float32 buffer holds, in order,
every parameter of the bucket's parts, then their float32 BatchNorm statistics, then momenta (every
carried one, then every outer one: the outer momenta end the buffer); BatchNorm's integer batch
counters fill a buffer of their own. The order is what lets a codec compress the parameters alone
(one leading slice; statistics and momenta travel exactly, §A.5), a round that leaves statistics alone
(``bn_sync_every``) skip them as one slice, and a part every rank holds leave its outer momenta home.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, TypeVar

import torch

from .. import aggregate

T = TypeVar("T")


def ordered(params: Iterable[T], buffers: Iterable[T], momenta: Iterable[T]) -> list[T]:
    """A bucket's state in its layout order (entries of any kind: tensors, names, setters)."""
    return [*params, *buffers, *momenta]


@dataclass(frozen=True)
class BucketLayout:
    """Where the parameters and the BatchNorm statistics of a bucket lie in its flat buffers.

    ``params``: the leading float32 values that are parameters (what a codec may compress).
    ``stats``: the float32 BatchNorm statistics right after them; every other-dtype buffer (BatchNorm's
    batch counters) is statistics too. Momenta follow the statistics in the float32 buffer, the last
    ``outer`` values of which are outer-optimizer momenta."""

    params: int = 0
    stats: int = 0
    outer: int = 0

    @classmethod
    def of(cls, params: Iterable[torch.Tensor], buffers: Iterable[torch.Tensor], align: int,
           outer: Iterable[torch.Tensor] = ()) -> BucketLayout:
        """The layout of a bucket holding ``params``, ``buffers`` and the outer momenta ``outer``, each
        view aligned to ``align`` bytes."""
        def floats(ts: Iterable[torch.Tensor]) -> int:
            return sum(aggregate.span(t, align) for t in ts if t.dtype == torch.float32)

        return cls(floats(params), floats(buffers), floats(outer))

    def without_outer(self, flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``flats`` less the outer momenta that end the float32 buffer (views). A part that every rank
        holds has the same outer momentum everywhere (each rank steps it after the same average), so
        averaging it would send bytes to learn nothing."""
        if not self.outer:
            return list(flats)
        return [flats[0][:flats[0].numel() - self.outer], *flats[1:]]

    def lossy(self, flats: Sequence[torch.Tensor]) -> list[int]:
        """Per flat buffer, how many leading values a codec may encode."""
        return [self.params if i == 0 and f.dtype == torch.float32 else 0 for i, f in enumerate(flats)]

    def exact_from(self, bn: bool) -> int:
        """Where the float32 values that travel exactly begin: right after the parameters in a round
        that averages BatchNorm statistics (``bn``), else after the statistics (they stay as they are)."""
        return self.params if bn else self.params + self.stats

    def statistics(self, flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Views of the BatchNorm statistics in ``flats`` (laid out as this bucket)."""
        return [flats[0][self.params:self.params + self.stats], *flats[1:]]
