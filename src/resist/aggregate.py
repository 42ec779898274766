"""Pure tensor math for synchronization (paper §2.3, Algorithm 1): packing and holder averages.

A part of the model (a block, or the shared layers) travels as one flat buffer per dtype: float
parameters, BatchNorm running statistics and momentum in one, BatchNorm's integer batch counters in
another. Averages sum in a fixed order so that every runtime computes the same bits.
"""

from __future__ import annotations

from typing import Sequence

import torch


def layout(tensors: Sequence[torch.Tensor]) -> list[tuple[torch.dtype, int]]:
    """``(dtype, numel)`` of each flat buffer that :func:`pack` makes, in order of first appearance."""
    sizes: dict[torch.dtype, int] = {}
    for t in tensors:
        sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    return list(sizes.items())


def empty_like_packed(tensors: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Receive buffers for :func:`pack` of ``tensors``; works when ``tensors`` live on the meta device."""
    return [torch.empty(n, dtype=dt, device=device) for dt, n in layout(tensors)]


@torch.no_grad()
def pack(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate ``tensors`` into one flat buffer per dtype (copies)."""
    order = [dt for dt, _ in layout(tensors)]
    return [torch.cat([t.reshape(-1) for t in tensors if t.dtype == dt]) for dt in order]


@torch.no_grad()
def unpack(flats: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> None:
    """Copy the flat buffers back into ``tensors`` (the inverse of :func:`pack`)."""
    for t, view in zip(tensors, views(flats, tensors)):
        t.copy_(view)


def views(flats: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views into the flat buffers shaped like ``tensors`` (the layout of :func:`pack`)."""
    by_dtype = {f.dtype: f for f in flats}
    offsets = dict.fromkeys(by_dtype, 0)
    out = []
    for t in tensors:
        off = offsets[t.dtype]
        out.append(by_dtype[t.dtype][off:off + t.numel()].view_as(t))
        offsets[t.dtype] = off + t.numel()
    return out


@torch.no_grad()
def mean(copies: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average of the holders' copies, summed in the given (rank) order; integers floor-divide.

    With one holder this is an exact copy, as the paper's aggregation requires.
    """
    total = copies[0].clone()
    for c in copies[1:]:
        total += c
    return total if len(copies) == 1 else divide_(total, len(copies))


def divide_(total: torch.Tensor, n: int) -> torch.Tensor:
    """A sum of ``n`` copies into their mean, in place: floats divide, integers (BatchNorm's batch
    counters) floor-divide."""
    return total.div_(n) if total.is_floating_point() else total.floor_divide_(n)
