"""User models: any stem, list of residual blocks and head, made trainable by ResIST.

:func:`residual_stack` wraps modules written without this package into a model with the
partitionable-model protocol (:mod:`resist.models.protocol`). It needs to know which blocks ResIST may
deal out, and how to scale a block's residual branch (paper §2.6), in one of three ways:

* the block already has a float attribute ``residual_scale`` that multiplies its branch (as this
  package's blocks do, and :class:`ScaledResidual` does for a branch given as a module);
* ``scale="bn2"``: the name of the submodule whose output ends the branch (the last BatchNorm of a
  torchvision-style ``BasicBlock``, ``"mlp"`` of a pre-norm block whose MLP is the last branch): a
  forward hook multiplies that output by c, so the block's own code is left as written; for blocks with
  several branches give a tuple of names;
* ``scale=callable(block, c)``, which sets it in any other way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from .protocol import reset_tree, run_stack


class ScaledResidual(nn.Module):
    """``post(shortcut(x) + c * branch(x))``: a residual block from its branch f (and, optionally, a
    shortcut for a block that changes the shape, and what follows the addition, as a post-activation
    block's ReLU). ``residual_scale`` is c."""

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None, post: nn.Module | None = None):
        super().__init__()
        self.branch, self.shortcut, self.post = branch, shortcut, post
        self.residual_scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x if self.shortcut is None else self.shortcut(x)) + self.residual_scale * self.branch(x)
        return out if self.post is None else self.post(out)


def _scale_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: the output of the module that ends a residual branch, times its ``resist_scale``.
    It reads the scale from the module it is called with, so that a deep copy of the model (evaluation
    recalibrates one) scales by its own value; at 1 it leaves the output as it is, bit for bit."""
    c = module.resist_scale
    return None if c == 1.0 else output * c


class ResidualStack(nn.Module):
    """``head(blocks[-1](... blocks[0](stem(x))))``, skipping the blocks in ``skip``: see
    :func:`residual_stack`, which builds it."""

    def __init__(self, stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module, partitionable: Iterable[int],
                 skippable: Iterable[int] | None, scale: str | Sequence[str] | Callable[[nn.Module, float], None] | None,
                 init: Callable[[nn.Module], None] | None):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        n = len(self.blocks)
        self.partitionable: tuple[int, ...] = tuple(sorted(set(int(i) for i in partitionable)))
        self.skippable: tuple[int, ...] = (self.partitionable if skippable is None
                                           else tuple(sorted(set(int(i) for i in skippable))))
        if not all(0 <= i < n for i in self.skippable + self.partitionable):
            raise ValueError(f"block indices must lie in [0, {n}), got partitionable {self.partitionable} and "
                             f"skippable {self.skippable}")
        if not set(self.partitionable) <= set(self.skippable):
            raise ValueError("every partitionable block must be skippable (it is left out of some sub-networks)")
        self.skip: frozenset[int] = frozenset()
        self._init = init
        if scale is None:
            lacking = [i for i, b in enumerate(self.blocks) if not hasattr(b, "residual_scale")]
            if lacking:
                raise ValueError(f"blocks {lacking[:5]} have no residual_scale attribute: wrap them in "
                                 f"ScaledResidual, or pass scale= (a submodule name or a function)")
            self._set_scale: Callable[[nn.Module, float], None] = lambda b, c: setattr(b, "residual_scale", c)
        elif callable(scale):
            self._set_scale = scale
        else:
            names = (scale,) if isinstance(scale, str) else tuple(scale)
            for i in self.skippable:
                for name in names:
                    try:
                        end = self.blocks[i].get_submodule(name)
                    except AttributeError:
                        raise ValueError(f"block {i} has no submodule {name!r} to scale") from None
                    end.resist_scale = 1.0
                    end.register_forward_hook(_scale_output)

            def set_ends(block: nn.Module, c: float) -> None:
                for name in names:
                    block.get_submodule(name).resist_scale = c

            self._set_scale = set_ends

    def reset_part(self, module: nn.Module) -> None:
        """The user's initialization of one part where given, else the modules' own (the protocol's)."""
        if self._init is not None:
            self._init(module)
        else:
            reset_tree(module)

    def set_residual_scale(self, indices: Iterable[int], c: float) -> None:
        for i in indices:
            self._set_scale(self.blocks[i], float(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stack(self, x)


def residual_stack(stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module, *, partitionable: Iterable[int],
                   skippable: Iterable[int] | None = None,
                   scale: str | Sequence[str] | Callable[[nn.Module, float], None] | None = None,
                   init: Callable[[nn.Module], None] | None = None) -> ResidualStack:
    """A model that ResIST can train, from a stem, the residual blocks of the trunk in order, and a head.

    Args:
        stem, blocks, head: the model's modules; the forward pass is stem, each block, head.
        partitionable: indices of the blocks ResIST deals out to sub-networks (``--partition section3``;
            the paper deals a ResNet's third section but its first, strided block, §2.2).
        skippable: blocks whose output has their input's shape, which ``--partition naive`` deals out;
            ``None``: the partitionable ones.
        scale: how a block's residual branch is multiplied by c (module docstring): ``None`` (the
            blocks have ``residual_scale``), the name(s) of the submodule(s) that end the branch, or a
            function ``(block, c)``. Only skippable blocks are ever scaled.
        init: ``init(module)`` initializes one part (the stem, the head or one block) in place from
            torch's global generator, seeded per part; ``None``: the modules' own ``reset_parameters``
            (:func:`resist.models.protocol.reset_tree`). Give the model's
            own initialization here: what its constructor did is not kept, because ranks build the model
            on the ``meta`` device and initialize each part they hold from its own seed.

    A factory that returns it, registered with :func:`resist.models.register_model` or named as
    ``"module:function"``, trains with ``--model``; it takes ``num_classes`` and ``width`` keywords.
    """
    return ResidualStack(stem, blocks, head, partitionable, skippable, scale, init)
