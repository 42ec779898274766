"""The model registry (timm style): ``create_model(name, num_classes=10, width=1.0, **kwargs)``.

It imports no model: each model module registers its factories with :func:`register_model`, beside
the class they build, and ``resist.models`` imports every model module, so a name is known as soon as
any part of the package is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from resist.registry import did_you_mean, first_sentence

from .protocol import ProtocolError, check_structure

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_model(name: str) -> str:
    """The first sentence of a registered factory's docstring (``resist models`` prints it)."""
    return first_sentence(" ".join((_MODELS[name].__doc__ or "").split())).replace("``", "'")


def _factory(name: str) -> Callable[..., nn.Module]:
    """A registered name, or ``"module:function"``: a factory importable in every process (spawned and
    torchrun ranks import it themselves, where a registration made in one script would be missing)."""
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
