"""ResNet architectures: pre-activation (He et al. 2016, "Identity Mappings in Deep Residual Networks")
and post-activation (He et al. 2015, "Deep Residual Learning for Image Recognition").

One :class:`ResNet` class serves every variant. Its residual blocks form one flat ``blocks`` list so that
ResIST (Dun et al.) can address, skip and move blocks by index; ``sections``, ``partitionable`` and
``skippable`` describe that list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resist.registry import STEMS

from .protocol import run_stack
from .registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def _residual(shortcut: torch.Tensor, out: torch.Tensor, scale: float) -> torch.Tensor:
    """``shortcut + scale * out``; while training the scale is 1 and its multiply (a pass over the
    activation forward and backward, 2% of a block at 8 channels) is skipped: x * 1.0 == x exactly."""
    return shortcut + out if scale == 1.0 else shortcut + scale * out


def _needs_projection(in_ch: int, out_ch: int, stride: int) -> bool:
    return stride != 1 or in_ch != out_ch


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 (He et al. 2016, Fig. 4e).

    A projection shortcut (1x1 conv) is applied to the already-activated input.
    """

    branch_outputs = ("conv2",)
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_ch)
        self.shortcut = conv1x1(in_ch, out_ch, stride) if _needs_projection(in_ch, out_ch, stride) else None
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return _residual(shortcut, out, self.residual_scale)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1, expansion 4
    (He et al. 2016). A projection shortcut is applied to the already-activated input."""

    branch_outputs = ("conv3",)
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv1x1(in_ch, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.shortcut = conv1x1(in_ch, out_ch, stride) if _needs_projection(in_ch, out_ch, stride) else None
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return _residual(shortcut, out, self.residual_scale)


def _post_act_projection(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """Post-activation shortcut: conv1x1 + BN where the shape changes, else the identity (None)."""
    if not _needs_projection(in_ch, out_ch, stride):
        return None
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv3x3-BN-ReLU-conv3x3-BN, add, ReLU (He et al. 2015, Fig. 2)."""

    branch_outputs = ("bn2",)
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _post_act_projection(in_ch, out_ch, stride)
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(_residual(shortcut, out, self.residual_scale))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: (conv-BN-ReLU) x2, conv-BN, add, ReLU; expansion 4, stride on the 3x3
    conv (He et al. 2015, Fig. 5). Projection shortcut is conv1x1 + BN."""

    branch_outputs = ("bn3",)
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = conv1x1(in_ch, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_ch)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _post_act_projection(in_ch, out_ch, stride)
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(_residual(shortcut, out, self.residual_scale))


BLOCKS = {
    ("preact", "basic"): PreActBasicBlock,
    ("preact", "bottleneck"): PreActBottleneck,
    ("postact", "basic"): BasicBlock,
    ("postact", "bottleneck"): Bottleneck,
}


class ResNet(nn.Module):
    """A ResNet with four sections of residual blocks (widths 64/128/256/512 x ``width``, strides 1/2/2/2).

    Args:
        layers: number of blocks in each of the 4 sections, e.g. (3, 4, 23, 3).
        block: "basic" or "bottleneck".
        preact: pre-activation blocks (He et al. 2016) if True, else post-activation (He et al. 2015).
        num_classes: outputs of the final linear layer.
        width: channel multiplier; a count c becomes ``max(1, round(c * width))``.
        stem: "cifar" (3x3 conv, stride 1) or "imagenet" (7x7/2 conv + 3x3/2 max-pool).
        final_norm: put BN-ReLU before the pooling in the head (pre-activation networks need it to
            normalize the last block's output; post-activation blocks already end in ReLU).

    ``forward`` runs the stem, every block whose index is not in ``self.skip``, then the head.
    """

    def __init__(
        self,
        layers: Sequence[int],
        block: str = "bottleneck",
        preact: bool = True,
        num_classes: int = 10,
        width: float = 1.0,
        stem: str = "cifar",
        final_norm: bool | None = None,
    ):
        super().__init__()
        layers = tuple(layers)
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got {layers!r}")
        if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
            raise ValueError(f"width must be a number > 0, got {width!r}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(map(repr, STEMS))}, got {stem!r}")
        block_cls = BLOCKS["preact" if preact else "postact", block]
        final_norm = preact if final_norm is None else final_norm

        def ch(c: int) -> int:
            return max(1, int(round(c * width)))

        in_ch = ch(64)
        stem_layers: list[nn.Module] = (
            [conv3x3(3, in_ch)]
            if stem == "cifar"
            else [nn.Conv2d(3, in_ch, 7, stride=2, padding=3, bias=False)]
        )
        if not preact:  # pre-activation blocks normalize their own input
            stem_layers += [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)]
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem_layers)

        blocks, sections = [], []
        for s, (n, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = ch(64 * 2**s)
            sections.append(tuple(range(len(blocks), len(blocks) + n)))
            for j in range(n):
                blocks.append(block_cls(in_ch, planes, stride if j == 0 else 1))
                in_ch = planes * block_cls.expansion
        self.blocks = nn.ModuleList(blocks)

        head: list[nn.Module] = [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)] if final_norm else []
        head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)]
        self.head = nn.Sequential(*head)

        self.layers = layers
        self.sections: tuple[tuple[int, ...], ...] = tuple(sections)
        # ResIST partitions section 3 except its first (strided, shape-changing) block (Dun et al. §2.2).
        self.partitionable: tuple[int, ...] = self.sections[2][1:]
        self.skippable: tuple[int, ...] = tuple(i for i, b in enumerate(blocks) if b.shortcut is None)
        self.skip: frozenset[int] = frozenset()

    def set_residual_scale(self, indices: Iterable[int], c: float) -> None:
        """Multiply the residual branch of the given blocks by ``c`` (stochastic-depth test-time rule)."""
        for i in indices:
            self.blocks[i].residual_scale = float(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stack(self, x)


# --- registered factories (resist.models.create_model) ---

# Paper ResNets (Dun et al., §2.1): pre-activation basic blocks, no BN-ReLU before the pooling.
@register_model
def paper_resnet(num_classes=10, width=1.0, *, layers, **kwargs):
    """Paper pre-activation basic-block ResNet (§2.1), any ``--layers``."""
    return ResNet(
        layers, "basic", preact=True, num_classes=num_classes, width=width, final_norm=False, **kwargs
    )


@register_model
def paper_resnet101(num_classes=10, width=1.0, **kwargs):
    """Paper ResNet101 (§2.1): pre-act basic blocks [3, 4, 23, 3], 22 partitionable."""
    return paper_resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def paper_resnet152(num_classes=10, width=1.0, **kwargs):
    """Paper ResNet152: pre-act basic blocks [3, 4, 36, 3], 35 partitionable."""
    return paper_resnet(num_classes, width, layers=(3, 4, 36, 3), **kwargs)


@register_model
def paper_resnet200(num_classes=10, width=1.0, **kwargs):
    """Paper ResNet200 (Table 8): pre-act basic blocks [3, 4, 50, 3], 49 partitionable."""
    return paper_resnet(num_classes, width, layers=(3, 4, 50, 3), **kwargs)


@register_model
def paper_resnet101_post(num_classes=10, width=1.0, **kwargs):
    """Paper ResNet101 with post-activation basic blocks (the ablation of Fig. 6)."""
    return ResNet((3, 4, 23, 3), "basic", preact=False, num_classes=num_classes, width=width, **kwargs)


# Standard pre-activation ResNets (He et al. 2016, "Identity Mappings"): bottleneck, final BN-ReLU.
@register_model
def preact_resnet(num_classes=10, width=1.0, *, layers, block="bottleneck", **kwargs):
    """Pre-activation bottleneck ResNet (He et al. 2016), any ``--layers``."""
    return ResNet(layers, block, preact=True, num_classes=num_classes, width=width, **kwargs)


@register_model
def preact_resnet50(num_classes=10, width=1.0, **kwargs):
    """Pre-activation bottleneck ResNet50 [3, 4, 6, 3] (He et al. 2016)."""
    return preact_resnet(num_classes, width, layers=(3, 4, 6, 3), **kwargs)


@register_model
def preact_resnet101(num_classes=10, width=1.0, **kwargs):
    """Pre-activation bottleneck ResNet101 [3, 4, 23, 3] (He et al. 2016)."""
    return preact_resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def preact_resnet152(num_classes=10, width=1.0, **kwargs):
    """Pre-activation bottleneck ResNet152 [3, 8, 36, 3] (He et al. 2016)."""
    return preact_resnet(num_classes, width, layers=(3, 8, 36, 3), **kwargs)


@register_model
def preact_resnet200(num_classes=10, width=1.0, **kwargs):
    """Pre-activation bottleneck ResNet200 [3, 24, 36, 3] (He et al. 2016)."""
    return preact_resnet(num_classes, width, layers=(3, 24, 36, 3), **kwargs)


# Post-activation ResNets (He et al. 2015): bottleneck, BN-ReLU after the stem conv.
@register_model
def resnet(num_classes=10, width=1.0, *, layers, block="bottleneck", **kwargs):
    """Post-activation bottleneck ResNet (He et al. 2015), any ``--layers``."""
    return ResNet(layers, block, preact=False, num_classes=num_classes, width=width, **kwargs)


@register_model
def resnet50(num_classes=10, width=1.0, **kwargs):
    """Post-activation bottleneck ResNet50 [3, 4, 6, 3] (He et al. 2015)."""
    return resnet(num_classes, width, layers=(3, 4, 6, 3), **kwargs)


@register_model
def resnet101(num_classes=10, width=1.0, **kwargs):
    """Post-activation bottleneck ResNet101 [3, 4, 23, 3] (He et al. 2015)."""
    return resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def resnet152(num_classes=10, width=1.0, **kwargs):
    """Post-activation bottleneck ResNet152 [3, 8, 36, 3] (He et al. 2015)."""
    return resnet(num_classes, width, layers=(3, 8, 36, 3), **kwargs)


@register_model
def resnet200(num_classes=10, width=1.0, **kwargs):
    """Post-activation bottleneck ResNet200 [3, 24, 36, 3] (He et al. 2015)."""
    return resnet(num_classes, width, layers=(3, 24, 36, 3), **kwargs)
