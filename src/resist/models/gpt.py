"""A GPT-style causal language model over bytes (Radford et al. 2019; nanoGPT's layout), shaped for ResIST.

Nothing in ResIST is specific to convolutions: a pre-norm transformer is a stem (token and position
embeddings), a stack of residual blocks ``x + f(x)`` and a head (a final LayerNorm and the output
projection). Each block adds two residual branches (attention, MLP); ``residual_scale`` multiplies
both, as the test-time rule of stochastic depth scales a ResNet block's branch (paper §2.6). The
partitionable blocks are all but the first and the last (``keep_ends``), every block is skippable (the
shapes never change). Output embeddings are not tied to the input ones: a tied matrix would belong to
two parts (stem and head) at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import run_stack
from .registry import register_model


class Embedding(nn.Module):
    """Token and learned position embeddings: the stem."""

    def __init__(self, vocab: int, dim: int, context: int):
        super().__init__()
        self.tok = nn.Parameter(torch.empty(vocab, dim))
        self.pos = nn.Parameter(torch.empty(context, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.tok, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, T, D)
        return self.tok[idx] + self.pos[: idx.shape[1]]


class Block(nn.Module):
    """Pre-norm transformer block: x + c * attn(ln1(x)), then x + c * mlp(ln2(x))."""

    branch_outputs = ("proj", "out")

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the embedding size {dim} is not a multiple of the {heads} heads")
        self.heads, self.depth = heads, depth
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.residual_scale = 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialization: N(0, 0.02) weights, zero biases, and the projections that write into
        the residual stream scaled by 1 / sqrt(2 x depth) so that the stream's variance does not grow
        with depth. A module-level rule, so the per-part seeded initialization keeps it."""
        for m in (self.ln1, self.ln2):
            m.reset_parameters()
        for m in (self.qkv, self.proj, self.fc, self.out):
            std = 0.02 / math.sqrt(2 * self.depth) if m in (self.proj, self.out) else 0.02
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        att = self.proj(att.transpose(1, 2).reshape(b, t, d))
        c = self.residual_scale
        x = x + att if c == 1.0 else x + c * att
        mlp = self.out(F.gelu(self.fc(self.ln2(x))))
        return x + mlp if c == 1.0 else x + c * mlp


class Head(nn.Module):
    """Final LayerNorm and the projection to the vocabulary."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.lm = nn.Linear(dim, vocab, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.ln.reset_parameters()
        nn.init.normal_(self.lm.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


class GPT(nn.Module):
    """Causal decoder: ``forward(idx)`` maps (B, T) token ids to (B, T, vocab) logits."""

    def __init__(self, depth: int = 8, dim: int = 256, heads: int = 4, context: int = 128, vocab: int = 256,
                 keep_ends: bool = True):
        super().__init__()
        if depth < (3 if keep_ends else 1):
            raise ValueError(f"depth must be >= {3 if keep_ends else 1}, got {depth}")
        self.context = context
        self.stem = Embedding(vocab, dim, context)
        self.blocks = nn.ModuleList(Block(dim, heads, depth) for _ in range(depth))
        self.head = Head(dim, vocab)
        self.sections: tuple[tuple[int, ...], ...] = (tuple(range(depth)),)
        self.partitionable: tuple[int, ...] = tuple(range(1, depth - 1) if keep_ends else range(depth))
        self.skippable: tuple[int, ...] = tuple(range(depth))
        self.skip: frozenset[int] = frozenset()

    def set_residual_scale(self, indices: Iterable[int], c: float) -> None:
        for i in indices:
            self.blocks[i].residual_scale = float(c)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.context:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the context of {self.context}")
        return run_stack(self, idx)


# --- registered factories (resist.models.create_model) ---

# Byte-level GPT (models/gpt.py): width scales the embedding size (256 at width 1, in whole heads).
@register_model
def gpt_char(num_classes=256, width=1.0, *, depth=8, heads=4, context=128, **kwargs):
    """Byte-level causal GPT (``--task lm``): 8 pre-norm blocks, 6 partitionable."""
    dim = max(1, round(64 * width)) * heads
    return GPT(depth=depth, dim=dim, heads=heads, context=context, vocab=num_classes, **kwargs)
