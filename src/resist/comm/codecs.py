"""Codecs: what a flat fp32 buffer becomes on the wire (paper Appendix A.5, Table 9; DDP's
``fp16_compress_hook``, torchft's quantized all-reduce).

A codec turns a flat tensor into payload tensors and back. The communicator sends the payloads as they
are and counts exactly their bytes, so a codec's cost is what :func:`payload_bytes` says: values, scales,
offsets and indices, k bits per value for k-bit quantization (packed 8 / k to a byte). Everything random
(stochastic rounding, random-k's choice of values) is drawn from a generator seeded by the caller with
integers, e.g. (seed, round, rank, part), so that both runtimes, and a resumed run, draw the same.

Codecs by name (:func:`make_codec`): ``fp16``, ``bf16``; ``q1`` ... ``q8``: uniform k-bit quantization
with a scale and offset per ``chunk`` values and stochastic rounding; ``topk`` / ``randk``: the
``keep`` fraction of values with the largest magnitude (indices sent) or chosen at random from a
shared seed (indices not sent: the receiver draws them too).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..registry import CODECS, SPARSE_CODECS
from ..seeds import mix


def payload_bytes(payload: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in payload)


class Codec(ABC):
    """Encodes a flat float32 tensor into payload tensors; :meth:`decode` inverts it (lossily)."""

    name: str

    @abstractmethod
    def encode(self, x: torch.Tensor, key: tuple[int, ...]) -> list[torch.Tensor]:
        """Payload for ``x`` (1-D float32); ``key`` seeds whatever is random."""

    @abstractmethod
    def decode(self, payload: list[torch.Tensor], numel: int, key: tuple[int, ...]) -> torch.Tensor:
        """A float32 tensor of ``numel`` values from ``payload`` (``key`` as given to :meth:`encode`)."""

    def empty_payload(self, numel: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Receive buffers shaped like the payload of a tensor of ``numel`` values."""
        return [torch.empty_like(t, device=device) for t in self.encode(torch.zeros(numel), (0,))]


def _generator(key: tuple[int, ...], device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(mix(0xC0DEC, *key))


@dataclass
class Cast(Codec):
    """Values rounded to a 16-bit float type (round to nearest)."""

    name: str
    dtype: torch.dtype

    def encode(self, x, key):
        return [x.to(self.dtype)]

    def decode(self, payload, numel, key):
        return payload[0].to(torch.float32)


@dataclass
class Quantize(Codec):
    """Uniform k-bit quantization with a float32 offset (the minimum) and scale per ``chunk`` values, and
    stochastic rounding (unbiased: E[decode(encode(x))] = x). The levels are bit-packed: n values take
    ``ceil(n k / 8)`` bytes, plus 8 bytes per chunk."""

    name: str
    bits: int
    chunk: int = 256

    def encode(self, x, key):
        n, c = x.numel(), self.chunk
        pad = (-n) % c
        # Pad with the last value, which cannot widen the last chunk's range.
        xs = (torch.cat([x, x[-1:].expand(pad)]) if pad else x).view(-1, c)  # (chunks, c)
        lo = xs.min(1, keepdim=True).values
        hi = xs.max(1, keepdim=True).values
        levels = (1 << self.bits) - 1
        scale = (hi - lo) / levels
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        u = ((xs - lo) / safe).clamp_(0, levels)
        noise = torch.rand(u.shape, generator=_generator(key, x.device), device=x.device)
        q = torch.floor(u + noise).clamp_(0, levels).to(torch.uint8).view(-1)[:n]
        return [_pack(q, self.bits), lo.view(-1), scale.view(-1)]

    def decode(self, payload, numel, key):
        packed, lo, scale = payload
        q = _unpack(packed, self.bits, numel).to(torch.float32)
        c = self.chunk
        pad = (-numel) % c
        q = torch.cat([q, q.new_zeros(pad)]).view(-1, c) if pad else q.view(-1, c)
        return (lo[:, None] + q * scale[:, None]).view(-1)[:numel]


_SLICE = 1 << 20  # values packed at a time (a multiple of 8, so every slice ends on a byte boundary)


def _pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 levels < 2**bits -> ``ceil(n bits / 8)`` bytes, little-endian bit order; in slices, so
    that the bit planes of a large tensor never exist all at once."""
    out = [_pack_slice(q[i:i + _SLICE], bits) for i in range(0, q.numel(), _SLICE)]
    packed = torch.cat(out) if out else q.new_zeros(0)
    assert packed.numel() == math.ceil(q.numel() * bits / 8)
    return packed


def _pack_slice(q: torch.Tensor, bits: int) -> torch.Tensor:
    shifts = torch.arange(bits, device=q.device, dtype=torch.uint8)
    planes = ((q[:, None] >> shifts) & 1).reshape(-1)  # (n * bits,) bits, value by value
    pad = (-planes.numel()) % 8
    if pad:
        planes = torch.cat([planes, planes.new_zeros(pad)])
    planes = planes.view(-1, 8)
    out = planes[:, 0].clone()
    for j in range(1, 8):
        out |= planes[:, j] << j
    return out


def _unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    step = _SLICE * bits // 8  # bytes of one slice of values
    parts = [_unpack_slice(packed[i * step:(i + 1) * step], bits, min(_SLICE, n - i * _SLICE))
             for i in range(math.ceil(n / _SLICE))]
    return torch.cat(parts) if parts else packed.new_zeros(0)


def _unpack_slice(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    planes = ((packed[:, None] >> torch.arange(8, device=packed.device, dtype=torch.uint8)) & 1).reshape(-1)
    planes = planes[:n * bits].view(n, bits)
    out = planes[:, 0].clone()
    for j in range(1, bits):
        out |= planes[:, j] << j
    return out


@dataclass
class TopK(Codec):
    """The ``keep`` fraction of values with the largest magnitude, with their int32 indices."""

    name: str
    keep: float

    def encode(self, x, key):
        k = max(1, math.ceil(self.keep * x.numel()))
        idx = x.abs().topk(k, sorted=False).indices.sort().values
        return [x[idx], idx.to(torch.int32)]

    def decode(self, payload, numel, key):
        values, idx = payload
        out = torch.zeros(numel, dtype=torch.float32, device=values.device)
        out[idx.long()] = values
        return out


@dataclass
class RandK(Codec):
    """A random ``keep`` fraction of the values, scaled by 1 / keep so that the estimate is unbiased;
    the indices are drawn by sender and receiver alike from ``key``, so only the values travel."""

    name: str
    keep: float

    def _idx(self, numel: int, key, device) -> torch.Tensor:
        k = max(1, math.ceil(self.keep * numel))
        return torch.randperm(numel, generator=_generator(key, device), device=device)[:k].sort().values

    def encode(self, x, key):
        return [x[self._idx(x.numel(), key, x.device)] / self.keep]

    def decode(self, payload, numel, key):
        out = torch.zeros(numel, dtype=torch.float32, device=payload[0].device)
        out[self._idx(numel, key, payload[0].device)] = payload[0]
        return out


def make_codec(name: str, keep: float = 0.25, chunk: int = 256) -> Codec | None:
    """The codec called ``name`` (``None`` for ``none``); ``ValueError`` with one line otherwise."""
    if name == "none":
        return None
    if name == "fp16":
        return Cast(name, torch.float16)
    if name == "bf16":
        return Cast(name, torch.bfloat16)
    m = re.fullmatch(r"q(\d+)", name)
    if m:
        bits = int(m.group(1))
        if not 1 <= bits <= 8:
            raise ValueError(f"quantization takes 1 to 8 bits, got {bits} ({name!r})")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        return Quantize(name, bits, chunk)
    if name in SPARSE_CODECS:
        if not 0 < keep <= 1:
            raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
        return (TopK if name == "topk" else RandK)(name, keep)
    raise ValueError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}")
