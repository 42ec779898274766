"""Pure tensor math for synchronization (paper §2.3, Algorithm 1): packing and holder averages.

A part of the model (a block, or the shared layers) travels as one flat buffer per dtype: float
parameters, BatchNorm running statistics and momentum in one, BatchNorm's integer batch counters in
another. Averages sum in a fixed order so that every runtime computes the same bits.
"""

from __future__ import annotations

from typing import Sequence

import torch


def span(t: torch.Tensor, align: int = 0) -> int:
    """How many values of its flat buffer ``t`` occupies: its own, rounded up so that the next tensor
    starts ``align`` bytes after the buffer's start times a whole number (0: packed tight)."""
    n = t.numel()
    per = align // t.element_size() if align else 0
    return -(-n // per) * per if per > 1 else n


def layout(tensors: Sequence[torch.Tensor], align: int = 0) -> list[tuple[torch.dtype, int]]:
    """``(dtype, numel)`` of each flat buffer that :func:`pack` makes, in order of first appearance."""
    sizes: dict[torch.dtype, int] = {}
    for t in tensors:
        sizes[t.dtype] = sizes.get(t.dtype, 0) + span(t, align)
    return list(sizes.items())


def empty_like_packed(tensors: Sequence[torch.Tensor], device: torch.device | str, align: int = 0) -> list[torch.Tensor]:
    """Receive buffers for :func:`pack` of ``tensors``; works when ``tensors`` live on the meta device.
    With ``align`` the padding is zeroed (it travels and is averaged like the values)."""
    make = torch.zeros if align else torch.empty
    return [make(n, dtype=dt, device=device) for dt, n in layout(tensors, align)]


@torch.no_grad()
def pack(tensors: Sequence[torch.Tensor], align: int = 0) -> list[torch.Tensor]:
    """Concatenate ``tensors`` into one flat buffer per dtype (copies); with ``align`` (bytes) every
    tensor starts at a multiple of it from the buffer's start, zeros between (cuDNN's vectorized kernels,
    channels-last batch norm among them, fail on parameters that are views at unaligned addresses)."""
    if not align:
        order = [dt for dt, _ in layout(tensors)]
        return [torch.cat([t.reshape(-1) for t in tensors if t.dtype == dt]) for dt in order]
    flats = empty_like_packed(tensors, tensors[0].device, align)
    for t, view in zip(tensors, views(flats, tensors, align)):
        view.copy_(t)
    return flats


@torch.no_grad()
def unpack(flats: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], align: int = 0) -> None:
    """Copy the flat buffers back into ``tensors`` (the inverse of :func:`pack`)."""
    for t, view in zip(tensors, views(flats, tensors, align)):
        t.copy_(view)


def views(flats: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], align: int = 0) -> list[torch.Tensor]:
    """Views into the flat buffers shaped like ``tensors`` (the layout of :func:`pack`)."""
    by_dtype = {f.dtype: f for f in flats}
    offsets = dict.fromkeys(by_dtype, 0)
    out = []
    for t in tensors:
        off = offsets[t.dtype]
        out.append(by_dtype[t.dtype][off:off + t.numel()].view_as(t))
        offsets[t.dtype] = off + span(t, align)
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
