"""What every dataset module shares: the one-line error and the in-memory image arrays (kept apart
from the loaders so that the sampler, the folder, text and VOC datasets import them without importing
each other)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
