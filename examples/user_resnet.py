"""A ResNet written without this package, trained by ResIST.

The first half is an ordinary CIFAR ResNet (He et al. 2015, post-activation basic blocks; the layout of
the widely copied kuangliu/pytorch-cifar models, with torchvision's initialization). Nothing in it knows
about ResIST. The second half, :func:`resist_resnet34`, makes it trainable by ResIST with
:func:`resist.models.residual_stack`: which modules are the stem, the blocks and the head, which blocks
are dealt out, where a block's residual branch ends (so that it can be scaled), and the initialization.

Train it with the CLI by naming the factory as ``module:function`` (every worker process imports it):

    PYTHONPATH=examples resist train cifar10_cpu --model user_resnet:resist_resnet34 --width 0.125
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from resist.models import residual_stack


# --- the user's model, as written for single-machine training -------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


def init_weights(m: nn.Module) -> None:
    """torchvision's ResNet initialization: He-normal convolutions (fan out), BatchNorm 1 and 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
        m.reset_running_stats()
    elif isinstance(m, nn.Linear):
        m.reset_parameters()


class ResNet(nn.Module):
    def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 10, base: int = 64):
        super().__init__()
        self.in_planes = base
        self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.layer1 = self._make_layer(base, num_blocks[0], 1)
        self.layer2 = self._make_layer(2 * base, num_blocks[1], 2)
        self.layer3 = self._make_layer(4 * base, num_blocks[2], 2)
        self.layer4 = self._make_layer(8 * base, num_blocks[3], 2)
        self.linear = nn.Linear(8 * base, num_classes)
        self.apply(init_weights)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --- what ResIST needs to know about it ------------------------------------------------------------

def as_resist(net: ResNet):
    """The same modules (and so the same parameters) as ``net``, as a model ResIST can train."""
    blocks = [*net.layer1, *net.layer2, *net.layer3, *net.layer4]
    first3 = len(net.layer1) + len(net.layer2)  # index of the third section's first block
    return residual_stack(
        stem=nn.Sequential(net.conv1, net.bn1, nn.ReLU()),
        blocks=blocks,
        head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.linear),
        partitionable=range(first3 + 1, first3 + len(net.layer3)),  # section 3 but its strided first block (§2.2)
        skippable=[i for i, b in enumerate(blocks) if len(b.shortcut) == 0],  # identity shortcuts
        scale="bn2",  # each residual branch ends in bn2: ResIST multiplies its output by c
        init=lambda part: part.apply(init_weights),  # the model's own initialization, part by part
    )


def resist_resnet34(num_classes: int = 10, width: float = 1.0):
    """The factory ``--model user_resnet:resist_resnet34`` calls (``width`` scales the channels)."""
    return as_resist(ResNet((3, 4, 6, 3), num_classes, base=max(1, round(64 * width))))
