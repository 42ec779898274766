"""Model registry (timm style): ``create_model(name, num_classes=10, width=1.0, **kwargs)``.

Factories pass extra kwargs (``stem``, ``layers``, ``block``) through to :class:`ResNet`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from resist.models.resnet import ResNet

__all__ = ["ResNet", "create_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, width: float = 1.0, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, width=width, **kwargs)


# Paper ResNets (Dun et al., §2.1): pre-activation basic blocks, no BN-ReLU before the pooling.
@register_model
def paper_resnet(num_classes=10, width=1.0, *, layers, **kwargs):
    return ResNet(
        layers, "basic", preact=True, num_classes=num_classes, width=width, final_norm=False, **kwargs
    )


@register_model
def paper_resnet101(num_classes=10, width=1.0, **kwargs):
    return paper_resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def paper_resnet152(num_classes=10, width=1.0, **kwargs):
    return paper_resnet(num_classes, width, layers=(3, 4, 36, 3), **kwargs)


@register_model
def paper_resnet200(num_classes=10, width=1.0, **kwargs):
    return paper_resnet(num_classes, width, layers=(3, 4, 50, 3), **kwargs)


@register_model
def paper_resnet101_post(num_classes=10, width=1.0, **kwargs):
    """The paper ResNet101 with post-activation basic blocks: the architecture ablation of Fig. 6."""
    return ResNet((3, 4, 23, 3), "basic", preact=False, num_classes=num_classes, width=width, **kwargs)


# Standard pre-activation ResNets (He et al. 2016, "Identity Mappings"): bottleneck, final BN-ReLU.
@register_model
def preact_resnet(num_classes=10, width=1.0, *, layers, block="bottleneck", **kwargs):
    return ResNet(layers, block, preact=True, num_classes=num_classes, width=width, **kwargs)


@register_model
def preact_resnet50(num_classes=10, width=1.0, **kwargs):
    return preact_resnet(num_classes, width, layers=(3, 4, 6, 3), **kwargs)


@register_model
def preact_resnet101(num_classes=10, width=1.0, **kwargs):
    return preact_resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def preact_resnet152(num_classes=10, width=1.0, **kwargs):
    return preact_resnet(num_classes, width, layers=(3, 8, 36, 3), **kwargs)


@register_model
def preact_resnet200(num_classes=10, width=1.0, **kwargs):
    return preact_resnet(num_classes, width, layers=(3, 24, 36, 3), **kwargs)


# Post-activation ResNets (He et al. 2015): bottleneck, BN-ReLU after the stem conv.
@register_model
def resnet(num_classes=10, width=1.0, *, layers, block="bottleneck", **kwargs):
    return ResNet(layers, block, preact=False, num_classes=num_classes, width=width, **kwargs)


@register_model
def resnet50(num_classes=10, width=1.0, **kwargs):
    return resnet(num_classes, width, layers=(3, 4, 6, 3), **kwargs)


@register_model
def resnet101(num_classes=10, width=1.0, **kwargs):
    return resnet(num_classes, width, layers=(3, 4, 23, 3), **kwargs)


@register_model
def resnet152(num_classes=10, width=1.0, **kwargs):
    return resnet(num_classes, width, layers=(3, 8, 36, 3), **kwargs)


@register_model
def resnet200(num_classes=10, width=1.0, **kwargs):
    return resnet(num_classes, width, layers=(3, 24, 36, 3), **kwargs)


# Byte-level GPT (models/gpt.py): width scales the embedding size (256 at width 1, in whole heads).
@register_model
def gpt_char(num_classes=256, width=1.0, *, depth=8, heads=4, context=128, **kwargs):
    from resist.models.gpt import GPT

    dim = max(1, round(64 * width)) * heads
    return GPT(depth=depth, dim=dim, heads=heads, context=context, vocab=num_classes, **kwargs)
