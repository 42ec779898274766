"""The partitionable-model protocol: what ResIST and the other algorithms need of a model.

Nothing in ResIST is specific to convolutions (Dun et al., §7): a model is a **stem**, a flat list of
residual **blocks** and a **head**, and ResIST deals some of the blocks out to sub-networks each round
(§2.2), skips the others, and scales the residual branches of the dealt blocks when the whole model runs
(§2.6). The ResNets (:mod:`resist.models.resnet`), the vision transformers (:mod:`resist.models.vit`)
and any user model wrapped by :func:`resist.models.residual_stack` implement it; :func:`check_model`
tests it (``tests/unit/test_protocol.py`` runs it over every registered model).

A model (an ``nn.Module``) exposes:

``stem``, ``blocks``, ``head``
    Modules; ``blocks`` an ``nn.ModuleList``. They are the *parts* that ranks hold and send: every
    parameter and buffer lives in exactly one of them (state-dict keys start with ``stem.``,
    ``blocks.<i>.`` or ``head.``), none is shared between two parts (no tied weights), each part has
    at least one parameter, and every buffer is persistent (it travels and is checkpointed with its
    part, as BatchNorm statistics do).
``partitionable``
    Sorted tuple of block indices that ResIST deals out (``--partition section3``; for a ResNet the
    third section but its first, strided block; for a ViT the blocks between the first and the last).
``skippable``
    Sorted tuple of the blocks a sub-network may leave out, i.e. that map a tensor to one of the same
    shape (``--partition naive`` deals all of them). ``partitionable`` is a subset of it.
``skip``
    A ``frozenset`` of block indices, empty when built. ``forward`` runs the stem, every block not in
    ``skip`` in order, then the head, and never touches a skipped block (its parameters may be on the
    ``meta`` device: a rank holds only its sub-network).
``set_residual_scale(indices, c)``
    Multiply the residual branch of each given block by ``c`` (all branches of a block with several,
    as a transformer's attention and MLP): the block computes x + c f(x) for a pre-activation or
    pre-norm block, and post(x + c f(x)) for a post-activation one. c = 1 is the block itself, bit for
    bit; c = 0 is skipping it.
``branch_outputs`` (optional, on a block)
    Names of the block's submodules whose affine output ends each residual branch (a last conv or
    linear, or a post-activation block's last BatchNorm): scaling their weight and bias by c scales the
    branch by c exactly. ResIST's cool-down folds c into them (:func:`fold_residual_scale`).
``reset_part(module)`` (optional)
    Initialize one part (``module`` is ``stem``, ``head`` or one block) in place, drawing from
    torch's global random generator, which the caller seeds per part: every rank creates any part
    identically without communication (:func:`init_part`). Model-specific rules live here (a ViT's
    truncated-normal linears), and so does any buffer the constructor computed (a causal mask, a
    rotary table), since a ``meta`` build holds none. Without it, :func:`reset_tree` runs: each
    submodule's ``reset_parameters``, where a module that has one initializes all it contains, so a
    module-level rule (a GPT block scaling its residual projections by 1/sqrt(2 depth)) is kept, not
    overwritten by its linears' defaults. A part left with an uninitialized floating-point tensor is
    an error.

The model is built on the ``meta`` device (``with torch.device("meta"): create_model(...)``) and parts
are materialized one at a time, so its constructor must not compute with its tensors. Registered
factories take ``num_classes`` and ``width`` (the model's size multiplier: ResNet channels, ViT
embedding dimension) as keywords.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Union

import torch
from torch import nn

from ..seeds import mix

#: A part of a model: ``"stem"``, ``"head"`` or a block index.
Part = Union[str, int]


def part_module(model: nn.Module, part: Part) -> nn.Module:
    return model.blocks[part] if isinstance(part, int) else getattr(model, part)


def _part_key(model: nn.Module, part: Part) -> int:
    return part + 1 if isinstance(part, int) else (0 if part == "stem" else len(model.blocks) + 1)


def can_fold(model: nn.Module, indices: Iterable[int]) -> bool:
    """Whether every given block names the modules that end its residual branches."""
    return all(getattr(model.blocks[i], "branch_outputs", None) for i in indices)


@torch.no_grad()
def fold_residual_scale(model: nn.Module, indices: Iterable[int], c: float) -> list[tuple[str, float]]:
    """Fold c into the given blocks' branch outputs (their weight and bias times c) and set their scale
    to 1: the model computes the same function with branches that train at scale 1. Returns the
    parameter names folded, each with the factor its parameter was multiplied by."""
    indices = list(indices)
    folded = []
    for i in indices:
        block = model.blocks[i]
        for name in block.branch_outputs:
            for pname, p in block.get_submodule(name).named_parameters(recurse=False):
                if pname in ("weight", "bias"):
                    p.mul_(c)
                    folded.append((f"blocks.{i}.{name}.{pname}", c))
    model.set_residual_scale(indices, 1.0)
    return folded


def reset_tree(module: nn.Module, rule: Callable[[nn.Module], bool] | None = None) -> None:
    """Initialize ``module`` and everything in it, top-down in registration order: a submodule that
    ``rule`` initializes (it returns True), or else one with ``reset_parameters``, is initialized with
    all it contains; below any other the search goes on. Where only leaves have ``reset_parameters``
    (PyTorch's layers, the ResNets) this is every leaf's ``reset_parameters`` in ``modules()`` order."""
    if rule is not None and rule(module):
        return
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    for child in module.children():
        reset_tree(child, rule)


def run_stack(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The protocol's forward pass: the stem, every block not in ``model.skip`` in order, the head. A
    skipped block is never touched, so a rank may leave it unallocated (on ``meta``)."""
    x = model.stem(x)
    skip = model.skip
    for i, block in enumerate(model.blocks):
        if i not in skip:
            x = block(x)
    return model.head(x)


@torch.no_grad()
def init_part(model: nn.Module, part: Part, seed: int, device: torch.device | str = "cpu") -> None:
    """Allocate ``part`` of ``model`` and give it its initialization, drawn on the CPU from a seed of
    its own: the same on every rank and device, whoever holds the part.

    The initialization is the model's own: its ``reset_part(module)`` where it defines one, else
    :func:`reset_tree` (the modules' own ``reset_parameters``; PyTorch's defaults for the ResNets).
    A floating-point tensor that it leaves unset is an error rather than uninitialized memory: every
    one is filled with NaN before and checked after."""
    module = part_module(model, part)
    module.to_empty(device="cpu")

    def floats() -> list[tuple[str, torch.Tensor]]:  # read again after: a reset may replace a tensor
        return [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]

    for _, t in floats():
        t.fill_(float("nan"))
    reset = getattr(model, "reset_part", None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix(seed, _part_key(model, part)))
        if reset is not None:
            reset(module)
        else:
            reset_tree(module)
    unset = [n for n, t in floats() if not bool(torch.isfinite(t).all())]
    if unset:
        how = "its reset_part(module)" if reset is not None else "the reset_parameters() of its modules"
        raise ValueError(f"{type(model).__name__} part {part!r}: {len(unset)} tensor(s) left uninitialized by "
                         f"{how}, first {unset[0]!r}; give the model a reset_part(module) that sets them")
    module.to(device)


def init_model(model: nn.Module, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """The whole global model as every algorithm initializes it (for references and tests)."""
    for part in ["stem", "head", *range(len(model.blocks))]:
        init_part(model, part, seed, device)
    return model


class ProtocolError(ValueError):
    """A model does not implement the partitionable-model protocol; the message says what is wrong."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ProtocolError(message)


def _indices(model: nn.Module, name: str) -> tuple[int, ...]:
    value = getattr(model, name, None)
    _require(isinstance(value, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in value),
             f"{name} must be a tuple of block indices, got {value!r}")
    _require(list(value) == sorted(set(value)) and all(0 <= i < len(model.blocks) for i in value),
             f"{name} must be sorted, distinct indices of blocks, got {value!r}")
    return value


def check_structure(model: nn.Module) -> None:
    """The attributes of the protocol and where every tensor lives (works on a ``meta`` model)."""
    for name in ("stem", "head"):
        _require(isinstance(getattr(model, name, None), nn.Module), f"the model has no module {name!r}")
    _require(isinstance(getattr(model, "blocks", None), nn.ModuleList), "model.blocks must be an nn.ModuleList")
    _require(len(model.blocks) >= 1, "model.blocks is empty")
    part_set = set(_indices(model, "partitionable"))
    _require(part_set <= set(_indices(model, "skippable")), "every partitionable block must be skippable")
    _require(getattr(model, "skip", None) == frozenset(), "model.skip must be an empty frozenset when built")
    _require(callable(getattr(model, "set_residual_scale", None)), "the model has no set_residual_scale(indices, c)")
    keys = [*dict(model.named_parameters(remove_duplicate=False)), *dict(model.named_buffers(remove_duplicate=False))]
    outside = [k for k in keys if k.split(".")[0] not in ("stem", "blocks", "head")]
    _require(not outside, f"tensors outside stem, blocks and head: {outside[:3]}")
    saved = set(model.state_dict(keep_vars=True))
    transient = [k for k, _ in model.named_buffers() if k not in saved]
    _require(not transient, f"non-persistent buffers {transient[:3]}: a part's buffers travel in its state dict")
    parts = [model.stem, model.head, *model.blocks]
    owner: dict[int, int] = {}
    for k, part in enumerate(parts):
        tensors = [*part.parameters(), *part.buffers()]
        _require(any(True for _ in part.parameters()), f"part {_name(k)} has no parameters")
        for t in tensors:
            _require(owner.setdefault(id(t), k) == k, f"a tensor is shared by parts {_name(owner[id(t)])} and {_name(k)}")


def _name(k: int) -> str:
    return ("stem", "head")[k] if k < 2 else f"block {k - 2}"


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of the whole model, its shared parts (stem, head, blocks that are not partitionable)
    and each partitionable block; exact on a ``meta`` model."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    part = {i: n(model.blocks[i]) for i in model.partitionable}
    total = n(model)
    return {"total": total, "shared": total - sum(part.values()), **{f"block{i}": c for i, c in part.items()}}


def step_costs(build: Callable[[], nn.Module], example: torch.Tensor,
               blocks: Iterable[int]) -> tuple[float, float]:
    """The forward FLOPs of one batch shaped like ``example`` through the whole model, split into what
    every sub-network runs (all but ``blocks``) and the mean of one of ``blocks``: the cost model of
    speed-balanced plans (``plan.block_counts``). Counted on the ``meta`` device, so nothing runs; a
    model whose blocks count no FLOP (no matmul or convolution) is costed by parameters instead."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build()
    blocks = tuple(blocks)
    with torch.device("meta"):
        x = torch.empty(example.shape, dtype=example.dtype)
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = {tuple(k.split(".")[1:]): sum(v.values()) for k, v in counter.get_flop_counts().items()}
    per_block = [counts.get(("blocks", str(i)), 0) for i in blocks]
    total = sum(counter.get_flop_counts().get("Global", {}).values())
    if not blocks or not all(per_block):
        per_block = [sum(q.numel() for q in model.blocks[i].parameters()) for i in blocks]
        total = sum(q.numel() for q in model.parameters())
    if not blocks:
        return float(total), 0.0
    return float(total - sum(per_block)), sum(per_block) / len(per_block)


def _subsets(blocks: tuple[int, ...], rng: random.Random, count: int) -> list[frozenset[int]]:
    """The empty set, all of them, each one alone (up to ``count``), and ``count`` random subsets."""
    out = [frozenset(), frozenset(blocks)] + [frozenset([b]) for b in blocks[:count]]
    out += [frozenset(rng.sample(blocks, rng.randint(1, len(blocks)))) for _ in range(count)] if blocks else []
    return out


@torch.no_grad()
def check_model(build: Callable[[], nn.Module], example: torch.Tensor, seed: int = 0, subsets: int = 3,
                atol: float = 1e-5) -> None:
    """Raise :class:`ProtocolError` unless the models ``build()`` makes implement the protocol.

    ``build`` makes the model on the current default device (it is also called under ``meta``);
    ``example`` is a tiny input batch. Checks: the structure (:func:`check_structure`) on a ``meta``
    build, with its parameter count equal to a materialized one's; seeded per-part initialization is
    complete and the same for a part made alone as within the whole model; a forward pass gives a
    finite output with the batch's leading size; skipping any of several sets of skippable blocks
    (with the skipped blocks left on ``meta``) equals scaling their branches by 0; scale 1 is the
    model itself, bit for bit, and any other scale changes the output.
    """
    with torch.device("meta"):
        meta = build()
    check_structure(meta)
    _require(all(t.is_meta for t in [*meta.parameters(), *meta.buffers()]),
             "a model built under torch.device('meta') must hold only meta tensors")
    model = init_model(build(), seed)
    _require(parameter_counts(model) == parameter_counts(meta), "parameter counts differ between meta and real builds")
    alone = build()
    for part in ("stem", "head", len(model.blocks) - 1):
        init_part(alone, part, seed)
        mine = alone.blocks[part] if isinstance(part, int) else getattr(alone, part)
        ref = model.blocks[part] if isinstance(part, int) else getattr(model, part)
        _require(all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), ref.state_dict().values())),
                 f"part {part!r} initialized alone differs from the same part of the whole model")
    # Perturb the initialization, so that a branch that starts at zero (zero-initialized last norm or
    # projection) still shows whether skipping and scaling act on it.
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    model.eval()
    full = model(example)
    _require(full.shape[0] == example.shape[0] and bool(torch.isfinite(full).all()),
             f"forward gave shape {tuple(full.shape)} or non-finite values for an input of {tuple(example.shape)}")
    rng = random.Random(seed)
    for skip in _subsets(model.skippable, rng, subsets):
        model.set_residual_scale(skip, 0.0)
        zeroed = model(example)
        model.set_residual_scale(skip, 1.0)
        _require(torch.equal(model(example), full), "set_residual_scale(..., 1.0) does not restore the model")
        skipped = _skipped_on_meta(build, model, skip, example)
        _require(torch.allclose(skipped, zeroed, atol=atol),
                 f"skipping blocks {sorted(skip)} differs from scaling their branches by 0 "
                 f"(max |diff| {(skipped - zeroed).abs().max().item():.3g})")
    for b in model.partitionable or model.skippable[:1]:
        model.set_residual_scale([b], 0.5)
        _require(not torch.allclose(model(example), full), f"scaling block {b}'s branch changes nothing")
        model.set_residual_scale([b], 1.0)


def _skipped_on_meta(build: Callable[[], nn.Module], model: nn.Module, skip: Iterable[int],
                     example: torch.Tensor) -> torch.Tensor:
    """The output of a copy of ``model`` that holds every block but ``skip`` (those stay on meta), as a
    rank holding only its sub-network computes it."""
    skip = frozenset(skip)
    with torch.device("meta"):
        sub = build()
    held = ["stem", "head", *(i for i in range(len(sub.blocks)) if i not in skip)]
    for part in held:
        mine = part_module(sub, part)
        mine.to_empty(device="cpu")
        mine.load_state_dict(part_module(model, part).state_dict())
    sub.skip = skip
    sub.eval()
    try:
        return sub(example)
    except (RuntimeError, NotImplementedError) as e:  # computing with a meta tensor and a real one
        raise ProtocolError(f"forward with blocks {sorted(skip)} skipped and on meta failed: it must not touch "
                            f"skipped blocks ({str(e).splitlines()[0]})") from None
