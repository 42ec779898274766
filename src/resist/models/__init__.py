"""Model registry (timm style): ``create_model(name, num_classes=10, width=1.0, **kwargs)``.

Factories pass extra kwargs through: ``stem``, ``layers``, ``block`` to :class:`ResNet`; ``stem``
(``cifar``: 32x32 images in 4-pixel patches, ``imagenet``: 224x224 in 16-pixel ones), ``pool``,
``depth``, ``shared_first`` / ``shared_last`` to :class:`VisionTransformer`. Every model implements the
partitionable-model protocol (:mod:`resist.models.protocol`); :func:`residual_stack` makes one from
user modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from resist.registry import did_you_mean, first_sentence

from resist.models.protocol import ProtocolError, check_model, check_structure
from resist.models.resnet import ResNet
from resist.models.stack import ResidualStack, ScaledResidual, residual_stack
from resist.models.vit import STEMS, VisionTransformer

__all__ = ["ProtocolError", "ResNet", "ResidualStack", "ScaledResidual", "VisionTransformer", "check_model",
           "create_model", "list_models", "register_model", "residual_stack"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def _register_detectors() -> None:
    """Register the detectors (paper §5: the post-activation ResNets with a YOLOv2 head,
    ``resist.tasks.detection.model.DETECTION_MODELS``) on first use: that module builds on
    ``resist.models.resnet``, so importing it while this package loads would be circular."""
    if not _DETECTORS_REGISTERED:
        from resist.tasks.detection.model import DETECTION_MODELS

        _MODELS.update(DETECTION_MODELS)
        _DETECTORS_REGISTERED.append(True)


_DETECTORS_REGISTERED: list[bool] = []


def list_models() -> list[str]:
    _register_detectors()
    return sorted(_MODELS)


def describe_model(name: str) -> str:
    """The first sentence of a registered factory's docstring (``resist models`` prints it)."""
    _register_detectors()
    return first_sentence(" ".join((_MODELS[name].__doc__ or "").split())).replace("``", "'")


def _factory(name: str) -> Callable[..., nn.Module]:
    """A registered name, or ``"module:function"``: a factory importable in every process (spawned and
    torchrun ranks import it themselves, where a registration made in one script would be missing)."""
    _register_detectors()
    if name in _MODELS:
        return _MODELS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, list_models())}; choose one of: "
                         f"{', '.join(list_models())}, or module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import model factory {name!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"model factory {name!r} is not callable")
    return fn


def create_model(name: str, num_classes: int = 10, width: float = 1.0, **kwargs) -> nn.Module:
    model = _factory(name)(num_classes=num_classes, width=width, **kwargs)
    if name not in _MODELS:  # a user's factory: what it made is checked here, before any rank trains it
        if not isinstance(model, nn.Module):
            raise ProtocolError(f"model factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module: "
                                f"it must return a model of stem, blocks and head (resist.models.residual_stack)")
        try:
            check_structure(model)
        except ProtocolError as e:
            raise ProtocolError(f"model factory {name!r} made a model ResIST cannot partition ({type(model).__name__}: "
                                f"{e}); wrap it with resist.models.residual_stack") from None
    return model


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


# Byte-level GPT (models/gpt.py): width scales the embedding size (256 at width 1, in whole heads).
@register_model
def gpt_char(num_classes=256, width=1.0, *, depth=8, heads=4, context=128, **kwargs):
    """Byte-level causal GPT (``--task lm``): 8 pre-norm blocks, 6 partitionable."""
    from resist.models.gpt import GPT

    dim = max(1, round(64 * width)) * heads
    return GPT(depth=depth, dim=dim, heads=heads, context=context, vocab=num_classes, **kwargs)

