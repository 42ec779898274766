"""Batched tensor preprocessing: uint8 HWC -> normalized float CHW, and random crop + flip.

Augmentation runs in pixel space, before normalization, so the 4-pixel padding of the crop is black
(0), as in the standard CIFAR recipe; padding after normalization would make it the mean colour.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(x_uint8_hwc: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, scaled to [0, 1] then normalized per channel."""
    return normalize(x_uint8_hwc.permute(0, 3, 1, 2), mean, std)


def normalize(x_uint8_chw: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, H, W) float32, scaled to [0, 1] then normalized per channel."""
    x = x_uint8_chw.to(torch.float32) / 255
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


def augment(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, independently per sample.

    ``x`` is (B, C, H, W) of any dtype; pass raw pixels (uint8) so that the padding is black. All randomness comes from ``generator`` (drawn in a fixed order: row offsets,
    column offsets, flips), so the same generator state gives the same output.
    """
    b, _, h, w = x.shape
    dev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=dev).to(x.device)
    rows = oy + torch.arange(h, device=x.device)  # (B, H) rows of the padded image
    cols = ox + torch.arange(w, device=x.device)  # (B, W)
    if flip:
        flipped = (torch.rand(b, 1, generator=generator, device=dev) < 0.5).to(x.device)
        cols = torch.where(flipped, cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
