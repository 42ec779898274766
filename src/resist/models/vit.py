"""Vision transformers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), pre-norm, as timm's
``VisionTransformer`` builds them, laid out for ResIST: a patch-embedding stem, a flat list of residual
blocks, a norm + linear head (the partitionable-model protocol, :mod:`resist.models.protocol`).

A pre-norm block is x + attn(norm1(x)) followed by x + mlp(norm2(x)): a residual block of the same kind
as a pre-activation ResNet's, with two branches. ResIST's residual scale c multiplies both branches
(stochastic depth's test-time rule applied to the whole block, paper §2.6), and a skipped block is the
identity, which a shape-preserving transformer block always allows. The paper names transformers as the
next place for ResIST (Dun et al., §7: "residual connections are now standard in ... transformers").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .protocol import reset_tree, run_stack
from .registry import register_model

#: ``stem`` -> image size and patch size: 4-pixel patches of 32x32 CIFAR images (an 8x8 grid, as ViT
#: variants trained on CIFAR from scratch use), 16-pixel patches of 224x224 ImageNet images (the ViT
#: paper's /16 models, a 14x14 grid).
STEMS = {"cifar": {"img_size": 32, "patch_size": 4}, "imagenet": {"img_size": 224, "patch_size": 16}}


class PatchStem(nn.Module):
    """Non-overlapping patches, linearly embedded (a strided convolution), an optional class token, and
    learned position embeddings (ViT eq. 1).

    An input whose patch grid differs from the one the embeddings were made for (e.g. 8x8 digits, or a
    12x12 synthetic test image) gets its position embeddings resized bicubically, as timm does when it
    fine-tunes at another resolution."""

    def __init__(self, dim: int, img_size: int, patch_size: int, class_token: bool):
        super().__init__()
        self.grid = img_size // patch_size
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid**2 + int(class_token), dim))

    def reset_parameters(self) -> None:
        """timm's ``VisionTransformer.init_weights``: the patch projection PyTorch's default, position
        embeddings N(0, 0.02) truncated, class token N(0, 1e-6)."""
        self.proj.reset_parameters()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H/p, W/p)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        prefix = int(self.cls_token is not None)
        pos = self.pos_embed[:, prefix:]
        if (h, w) != (self.grid, self.grid):
            d = pos.shape[-1]
            pos = pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1).reshape(1, h * w, d)
        x = x + pos
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        return x


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, scaled dot-product attention, an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, d/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d/H)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + c attn(LN(x)), then x + c mlp(LN(x)); c is ``residual_scale``."""

    branch_outputs = ("attn.proj", "mlp.fc2")

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.residual_scale  # 1 while training: its multiply is skipped (x * 1.0 == x exactly)
        a = self.attn(self.norm1(x))
        x = x + a if c == 1.0 else x + c * a
        m = self.mlp(self.norm2(x))
        return x + m if c == 1.0 else x + c * m


class ViTHead(nn.Module):
    """Final LayerNorm, then the class token (``pool="token"``) or the mean of the patch tokens
    (``"mean"``), then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, pool: str):
        super().__init__()
        self.pool = pool
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)  # (B, N, D)
        x = x[:, 0] if self.pool == "token" else x.mean(dim=1)  # (B, D)
        return self.fc(x)


class VisionTransformer(nn.Module):
    """A pre-norm ViT with ResIST's model protocol (``stem``, ``blocks``, ``head``, ``partitionable``,
    ``skippable``, ``skip``, :meth:`set_residual_scale`, :meth:`reset_part`).

    Args:
        dim: embedding dimension at width 1 (ViT-Ti 192, ViT-S 384; Touvron et al. 2021, DeiT).
        depth: number of blocks (12 for both).
        heads: attention heads (3, 6); fixed by width, so ``width`` scales the dimension per head.
        num_classes: outputs of the head.
        width: multiplies the embedding dimension (and with it the MLP's hidden size), rounded to a
            multiple of ``heads`` and at least one per head: ``heads * max(1, round(dim * width / heads))``.
        img_size, patch_size: the image size the position embeddings are made for, and the patch side.
        pool: ``"token"`` (a class token, the ViT paper's) or ``"mean"`` (no class token; mean of tokens).
        mlp_ratio: the MLP's hidden size over the embedding dimension (4).
        shared_first, shared_last: how many blocks at either end ResIST never deals out; the blocks
            between are ``partitionable`` (by default all but the first and the last, so that every
            sub-network keeps a block right after the embedding and one right before the head, as the
            paper keeps a ResNet's first two sections and its last).
    """

    def __init__(self, dim: int = 192, depth: int = 12, heads: int = 3, num_classes: int = 10, width: float = 1.0,
                 img_size: int = 32, patch_size: int = 4, pool: str = "token", mlp_ratio: float = 4.0,
                 shared_first: int = 1, shared_last: int = 1):
        super().__init__()
        for name, v in (("dim", dim), ("depth", depth), ("heads", heads), ("img_size", img_size),
                        ("patch_size", patch_size), ("num_classes", num_classes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width must be a number > 0, got {width!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("token", "mean"):
            raise ValueError(f"pool must be 'token' or 'mean', got {pool!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        if not (isinstance(shared_first, int) and isinstance(shared_last, int) and shared_first >= 0
                and shared_last >= 0 and shared_first + shared_last <= depth):
            raise ValueError(f"shared_first and shared_last must be ints >= 0 with a sum <= depth {depth}, "
                             f"got {shared_first!r} and {shared_last!r}")
        d = heads * max(1, int(round(dim * width / heads)))
        self.dim = d
        self.stem = PatchStem(d, img_size, patch_size, class_token=pool == "token")
        self.blocks = nn.ModuleList(ViTBlock(d, heads, mlp_ratio) for _ in range(depth))
        self.head = ViTHead(d, num_classes, pool)
        self.partitionable: tuple[int, ...] = tuple(range(shared_first, depth - shared_last))
        self.skippable: tuple[int, ...] = tuple(range(depth))  # every block keeps the token shape
        self.skip: frozenset[int] = frozenset()
        for part in (self.stem, *self.blocks, self.head):  # a model built off the package is usable as is
            self.reset_part(part)

    @torch.no_grad()
    def reset_part(self, module: nn.Module) -> None:
        """timm's ViT initialization (``init_weights_vit_timm``) of one part: every linear layer
        N(0, 0.02) truncated with a zero bias; everything else its own ``reset_parameters`` (LayerNorm
        to 1 and 0, the stem as :class:`PatchStem` says)."""

        def linear(m: nn.Module) -> bool:
            if not isinstance(m, nn.Linear):
                return False
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
            return True

        reset_tree(module, linear)

    def set_residual_scale(self, indices: Iterable[int], c: float) -> None:
        """Multiply both residual branches of the given blocks by ``c`` (§2.6)."""
        for i in indices:
            self.blocks[i].residual_scale = float(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stack(self, x)


# --- registered factories (resist.models.create_model) ---

# Vision transformers (Dosovitskiy et al. 2021), pre-norm, at the DeiT sizes (Touvron et al. 2021):
# ViT-Ti 192-dim and 3 heads, ViT-S 384-dim and 6 heads, both 12 blocks with MLP ratio 4.
def _vit(dim: int, heads: int, num_classes: int, width: float, stem: str, kwargs: dict) -> VisionTransformer:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if "layers" in kwargs:  # a preset's ResNet sections (the smoke preset sets them)
        raise ValueError("a vision transformer has no ResNet sections (layers); unset them with "
                         "--set model.layers=null")
    return VisionTransformer(dim=dim, heads=heads, num_classes=num_classes, width=width, **{**STEMS[stem], **kwargs})


@register_model
def vit_tiny(num_classes=10, width=1.0, *, stem="cifar", **kwargs):
    """ViT-Ti (DeiT size): 12 pre-norm blocks, 192-dim, 3 heads; 10 partitionable."""
    return _vit(192, 3, num_classes, width, stem, kwargs)


@register_model
def vit_small(num_classes=10, width=1.0, *, stem="cifar", **kwargs):
    """ViT-S (DeiT size): 12 pre-norm blocks, 384-dim, 6 heads; 10 partitionable."""
    return _vit(384, 6, num_classes, width, stem, kwargs)
