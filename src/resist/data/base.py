"""What every dataset module shares: the one-line error, the in-memory image arrays, and the protocol
every dataset offers the trainer (kept apart from the loaders so that the sampler, the folder, text and
VOC datasets import them without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch


class BatchSource(Protocol):
    """One worker's training batches, a pure function of the step (so that a run resumed at any step
    sees the batches it would have seen): in-memory images, image folders, text windows, VOC images."""

    steps_per_epoch: int

    def batch(self, step: int) -> tuple[Any, Any]:
        """(inputs, targets) of this worker's batch at global ``step``."""

    def close(self) -> None:
        """Stop any loader processes (image folders, VOC); in memory, nothing to stop."""


class DataSource(Protocol):
    """What the trainer reads of a dataset, whichever kind: its size, classes and provenance, one
    :class:`BatchSource` per worker, and the test sets (``resist.data.Dataset``, ``FolderDataset``,
    ``TextDataset``, ``VOCDataset``)."""

    name: str
    source: str
    classes: tuple[str, ...] | None
    """Class names in index order where the dataset has them (written to the run folder), else None."""

    @property
    def num_classes(self) -> int: ...

    @property
    def n_train(self) -> int:
        """Training examples per epoch, which every worker's shard divides (``sharding.shard``)."""

    def train_stream(self, world_size: int, rank: int, batch_size: int, seed: int, augment: bool = True, *,
                     device: Any = None, loader_workers: int = 0, bad: Any = None) -> BatchSource:
        """Worker ``rank``'s training batches (``augment=False``: the recalibration stream)."""

    def eval_sets(self, batch_size: int, limit: int | None = None, *, device: Any = None, loader_workers: int = 0,
                  bad: Any = None) -> dict[str, Callable[[], Iterable]]:
        """Test set name ("test" first) -> a function yielding its batches in order."""


class DatasetError(ValueError):
    """A dataset could not be found, downloaded or validated; the message is one actionable line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class ImageArrays:
    """Images ``x`` (N, H, W, 3) uint8 HWC RGB with labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        x, y = self.x, self.y
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise DatasetError(f"images must be a (N, H, W, 3) uint8 tensor, got {describe(x)}")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
            raise DatasetError(f"labels must be a (N,) int64 tensor, got {describe(y)}")
        if len(x) != len(y):
            raise DatasetError(f"{len(x)} images but {len(y)} labels")

    def __len__(self) -> int:
        return len(self.y)

def describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
