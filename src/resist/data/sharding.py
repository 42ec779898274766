"""Deterministic per-worker batches: pure functions of (seed, world size, rank, step), so a run resumed at
any step sees exactly the batches it would have seen."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..seeds import mix as _mix
from .augment import augment as _augment
from .augment import normalize, to_float
from .base import ImageArrays

def steps_per_epoch(n: int, world_size: int, batch_size: int) -> int:
    """Full batches per worker per epoch: floor(floor(n / world_size) / batch_size)."""
    if world_size < 1 or batch_size < 1:
        raise ValueError(f"world_size and batch_size must be >= 1, got {world_size} and {batch_size}")
    spe = (n // world_size) // batch_size
    if spe == 0:
        raise ValueError(f"dataset of {n} examples is too small for {world_size} workers x batch size "
                         f"{batch_size}; use fewer workers or a smaller batch")
    return spe


def shard(n: int, world_size: int, rank: int) -> slice:
    """Worker ``rank``'s disjoint contiguous part of an epoch's permutation of range(n): floor(n / world_size)
    positions (the remainder is dropped). Every dataset's shards are cut here."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    per = n // world_size
    return slice(rank * per, (rank + 1) * per)


def batch_positions(n: int, world_size: int, rank: int, step: int, batch_size: int) -> tuple[int, slice]:
    """(epoch, positions in that epoch's permutation) of worker ``rank``'s batch at global ``step``: its
    :func:`shard`, walked in batches."""
    spe = steps_per_epoch(n, world_size, batch_size)
    own = shard(n, world_size, rank)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, k = divmod(step, spe)
    first = own.start + k * batch_size
    return epoch, slice(first, first + batch_size)


def batch_indices(n: int, world_size: int, rank: int, step: int, batch_size: int, seed: int) -> Tensor:
    """Indices (int64) of worker ``rank``'s batch at global ``step``.

    Each epoch draws a permutation of range(n) seeded by (seed, epoch), cuts it into ``world_size`` disjoint
    contiguous shards of floor(n / world_size), and walks ``rank``'s shard in batches; the remainder is dropped.
    """
    epoch, positions = batch_positions(n, world_size, rank, step, batch_size)
    return epoch_permutation(n, seed, epoch)[positions]


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of ``range(n)`` in ``epoch``, which every worker cuts into its shard."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


def batch_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator for augmenting worker ``rank``'s batch at ``step``."""
    return torch.Generator().manual_seed(_mix(0xA06, seed, rank, step))  # salt: separate from batch_indices


class BatchStream:
    """Worker ``rank``'s training batches: ``.batch(step)`` -> (x (B, 3, H, W) float32, y (B,) int64).

    If ``augment``, each image is randomly cropped (4-pixel black padding) and flipped in pixel space;
    then x is normalized with ``mean``/``std``.
    """

    def __init__(self, arrays: ImageArrays, mean: Sequence[float], std: Sequence[float], world_size: int,
                 rank: int, batch_size: int, seed: int, augment: bool = True):
        self.arrays, self.mean, self.std = arrays, tuple(mean), tuple(std)
        self.world_size, self.rank, self.batch_size = world_size, rank, batch_size
        self.seed, self.augment = seed, augment
        self.steps_per_epoch = steps_per_epoch(len(arrays.y), world_size, batch_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        idx = batch_indices(len(self.arrays.y), self.world_size, self.rank, step, self.batch_size, self.seed)
        x = self.arrays.x[idx].permute(0, 3, 1, 2)  # (B, 3, H, W) uint8: augment pads with black pixels
        if self.augment:
            x = _augment(x, batch_generator(self.seed, self.rank, step))
        return normalize(x, self.mean, self.std), self.arrays.y[idx]

    def close(self) -> None:
        """Nothing to stop: the images are in memory (an image folder's stream stops its loaders)."""


def eval_batches(arrays: ImageArrays, mean: Sequence[float], std: Sequence[float],
                 batch_size: int = 500) -> Iterator[tuple[Tensor, Tensor]]:
    """All of ``arrays`` in order, normalized, without augmentation; the last batch may be short."""
    for i in range(0, len(arrays.y), batch_size):
        yield to_float(arrays.x[i:i + batch_size], mean, std), arrays.y[i:i + batch_size]
