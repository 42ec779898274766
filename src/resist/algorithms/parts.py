"""The part store: which parts of the global model one rank holds, and their state.

A worker builds the architecture on the ``meta`` device (no memory) and materializes only the parts it
holds: the stem, the head, the shared blocks, and the partitioned blocks of its current sub-network
(paper §2.5, Fig. 3). A part is ``"stem"``, ``"head"`` or a block index. Every part is initialized
from a seed of its own, so any rank can create any part identically without communication
(:func:`resist.models.protocol.init_part`, with the model's own initialization).

Every held tensor lives in a flat buffer per dtype of its bucket (``"shared"``, or a block index), so
that synchronization sends and all-reduces those buffers as they are, with no copies (as DDP's buckets
and apex's flat parameters do), laid out as :mod:`resist.algorithms.buckets` says. A part's state is its parameters, its buffers (BatchNorm statistics)
and, where momentum persists across rounds, its momentum.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .. import aggregate
from ..comm import Communicator
from .buckets import BucketLayout, ordered
# How a part is made from its seed is the model protocol's (the model's own initialization); re-exported.
from ..models.protocol import Part, init_model, init_part, part_module  # noqa: F401


def tensors_of(module: nn.Module) -> list[torch.Tensor]:
    """Parameters (as plain tensors) then buffers, in registration order."""
    return [p.data for p in module.parameters()] + list(module.buffers())


def alignment(device: torch.device) -> int:
    """Bytes each parameter's view is aligned to inside its flat bucket on ``device``: 128 on CUDA,
    where cuDNN's vectorized kernels (channels-last batch norm and 1x1 convolutions among them) stop
    with "misaligned address" on views at arbitrary offsets; 0 (packed tight) elsewhere, so the bytes on
    the wire are exactly the values'. The padding is zeros, travels with the bucket and stays zero."""
    return 128 if device.type == "cuda" else 0


#: A state tensor's checkpoint name, the tensor, and how to put another tensor in its place.
Entry = tuple[str, torch.Tensor, Callable[[torch.Tensor], None]]


class PartStore:
    """One rank's parts of the global model: holding, flat buffers, state, and loading from a checkpoint.

    ``candidates`` are the blocks an algorithm may deal out; every other part is shared. With
    ``carry_momentum`` each held parameter has a momentum tensor that belongs to its part's state; with
    ``outer`` it also has an outer-optimizer momentum (part of its state, checkpointed; a candidate
    block only with ``outer_blocks``) and a copy of its value at the start of the round (:meth:`snapshot`;
    not state: a round starts from the state).
    """

    def __init__(self, build_model: Callable[[], nn.Module], device: torch.device, candidates: tuple[int, ...],
                 carry_momentum: bool, init_seed: int, outer: bool = False, outer_blocks: bool = True) -> None:
        self.build_model, self.device, self.init_seed = build_model, device, init_seed
        #: Bytes every state tensor's view is aligned to in its bucket (0: packed tight; see ``alignment``).
        self.align = alignment(device)
        self.model = build_model()
        self.candidates = tuple(candidates)
        cset = set(self.candidates)
        self.shared_parts: list[Part] = ["stem", "head"] + [i for i in range(len(self.model.blocks)) if i not in cset]
        self.carry = carry_momentum
        self.momentum: dict[str, torch.Tensor] = {}
        self.outer, self.outer_blocks = outer, outer_blocks
        self.outer_momentum: dict[str, torch.Tensor] = {}
        self.round_start: dict[str, torch.Tensor] = {}
        self.flats: dict[Part, list[torch.Tensor]] = {}
        #: Per bucket, where its parameters and BatchNorm statistics lie in its flat buffers.
        self.layouts: dict[Part, BucketLayout] = {}

    # --- holding ---------------------------------------------------------------------------------
    def module(self, part: Part) -> nn.Module:
        return part_module(self.model, part)

    def prefix(self, part: Part) -> str:
        return f"blocks.{part}." if isinstance(part, int) else f"{part}."

    def held(self, part: Part) -> bool:
        return not next(self.module(part).parameters()).is_meta

    def all_parts(self) -> list[Part]:
        return self.shared_parts + list(self.candidates)

    def stepped(self, part: Part) -> bool:
        """Whether ``part`` takes the outer step (and so has an outer momentum)."""
        return self.outer and (self.outer_blocks or part not in self.candidates)

    def _param_names(self, part: Part) -> list[str]:
        return [n for n, _ in self.module(part).named_parameters(prefix=self.prefix(part).rstrip("."))]

    @torch.no_grad()
    def materialize(self, part: Part, init: bool) -> None:
        """Allocate ``part``; with ``init``, fill it with its seeded initialization."""
        if init:
            init_part(self.model, part, self.init_seed, self.device)
        else:
            self.module(part).to_empty(device=self.device)
        for name, p in zip(self._param_names(part), self.module(part).parameters()):
            if self.carry:
                self.momentum[name] = torch.zeros_like(p)
            if self.stepped(part):
                self.outer_momentum[name] = torch.zeros_like(p)

    def release(self, part: Part) -> None:
        for name in self._param_names(part):
            for state in (self.momentum, self.outer_momentum, self.round_start):
                state.pop(name, None)
        self.flats.pop(part, None)
        self.layouts.pop(part, None)
        self.module(part).to("meta")

    def start(self, parts: list[Part], state: dict[str, torch.Tensor] | None) -> None:
        """Materialize ``parts``: freshly initialized, or from a full state dict (a checkpoint)."""
        for part in parts:
            self.materialize(part, init=state is None)
            if state is not None:
                self.load_part(part, state)

    # --- state -----------------------------------------------------------------------------------
    def _entries(self, parts: list[Part], outer: bool) -> list[Entry]:
        """Each state tensor of ``parts`` with its checkpoint name and a way to replace it, in the
        bucket layout's order (:func:`~resist.algorithms.buckets.ordered`); ``outer``: with the outer
        momentum (where kept). Momentum not yet allocated is a meta tensor of its parameter's shape."""
        params, buffers, carried, outers = [], [], [], []
        for part in parts:
            module = self.module(part)
            for prefix, m in module.named_modules(prefix=self.prefix(part).rstrip(".")):
                params += [(f"{prefix}.{n}", p.data, lambda v, m=m, n=n, g=p.requires_grad:
                            m._parameters.__setitem__(n, nn.Parameter(v, requires_grad=g)))
                           for n, p in m._parameters.items() if p is not None]
            for prefix, m in module.named_modules(prefix=self.prefix(part).rstrip(".")):
                buffers += [(f"{prefix}.{n}", b, lambda v, m=m, n=n: m._buffers.__setitem__(n, v))
                            for n, b in m._buffers.items() if b is not None]
            outer_kept = self.stepped(part) and outer
            for label, kept, wanted, into in (("momentum/", self.momentum, self.carry, carried),
                                              ("outer_momentum/", self.outer_momentum, outer_kept, outers)):
                if wanted:
                    into += [(label + n, kept.get(n, torch.empty_like(p, device="meta")),
                              lambda v, n=n, kept=kept: kept.__setitem__(n, v))
                             for n, p in zip(self._param_names(part), module.parameters())]
        return ordered(params, buffers, carried + outers)

    @torch.no_grad()
    def bucket(self, key: Part, parts: list[Part], fresh: bool = False, outer: bool = True) -> None:
        """Put the state tensors of ``parts`` into one flat buffer per dtype, filed under ``key``; the
        parameters, buffers and momentum become views into it. ``fresh``: allocate without copying,
        for a part about to be overwritten. ``outer=False`` leaves the outer momentum out of the bucket
        (for parts that every rank holds: it is the same everywhere, so it need not travel)."""
        entries = self._entries(parts, outer)
        a = self.align
        self.layouts[key] = BucketLayout.of([p for part in parts for p in self.module(part).parameters()],
                                            [b for part in parts for b in self.module(part).buffers()], a,
                                            [t for name, t, _ in entries if name.startswith("outer_momentum/")])
        tensors = [t for _, t, _ in entries]
        flats = aggregate.empty_like_packed(tensors, self.device, a) if fresh else aggregate.pack(tensors, a)
        for (_, _, point), view in zip(entries, aggregate.views(flats, tensors, a)):
            point(view)
        self.flats[key] = flats

    def state_tensors(self, part: Part) -> list[torch.Tensor]:
        """The state of ``part``: parameters, BatchNorm buffers and, where kept, momentum and outer
        momentum (in :meth:`state_names` order)."""
        return [t for _, t, _ in self._entries([part], outer=True)]

    def state_names(self, part: Part) -> list[str]:
        """Names of :meth:`state_tensors` in a checkpoint: state-dict keys, then ``momentum/<param>``."""
        return [n for n, _, _ in self._entries([part], outer=True)]

    def load_part(self, part: Part, state: dict[str, torch.Tensor]) -> None:
        """Fill a materialized ``part`` from a :func:`gather_state` dict (a checkpoint)."""
        names = self.state_names(part)
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"checkpoint lacks {missing[0]} (and {len(missing) - 1} more); it is not from this config")
        with torch.no_grad():
            for name, t in zip(names, self.state_tensors(part)):
                if state[name].shape != t.shape:
                    raise ValueError(f"checkpoint tensor {name} has shape {tuple(state[name].shape)}, "
                                     f"the model expects {tuple(t.shape)}")
                t.copy_(state[name])

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember every held parameter's value at the start of the round (for the outer step)."""
        for name, p in self.trainable():
            if name in self.round_start:
                self.round_start[name].copy_(p)
            else:
                self.round_start[name] = p.detach().clone()

    def outer_state(self, parts: Iterable[Part]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(parameter, its round-start value, its outer momentum)`` of every parameter of ``parts``:
        what :class:`~resist.algorithms.outer.OuterSGD` steps. BatchNorm statistics are not stepped."""
        return [(p, self.round_start[n], self.outer_momentum[n]) for part in parts
                for n, p in zip(self._param_names(part), self.module(part).parameters())]

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """The held parameters, by name."""
        return [(n, p) for n, p in self.model.named_parameters() if not p.is_meta]

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None) -> int:
        """Bytes of model state this rank holds now: parameters, gradients, buffers, optimizer state."""
        tensors = [t for t in self.model.parameters() if not t.is_meta]
        tensors += [t.grad for t in tensors if t.grad is not None]
        tensors += [b for b in self.model.buffers() if not b.is_meta]
        tensors += [*self.outer_momentum.values(), *self.round_start.values()]
        if optimizer is not None:
            tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        seen = {id(t): t for t in tensors}  # carried momentum appears both in the optimizer and here
        return sum(t.numel() * t.element_size() for t in seen.values())


# --- the global model, from the parts every rank holds (collectives) ------------------------------

@torch.no_grad()
def gather_state(comm: Communicator, store: PartStore, holders: dict[Part, tuple[int, ...]],
                 tag: str = "eval") -> dict[str, torch.Tensor] | None:
    """Collective: every parameter, BatchNorm buffer and carried momentum of the global model, as one
    flat dict on rank 0 (``None`` elsewhere). Each block comes from its lowest holder in ``holders``."""
    me = comm.rank
    sends, recvs, incoming = [], [], {}
    with comm.tag(tag):
        for b in store.candidates:
            src = holders[b][0]
            if 0 in holders[b] or me not in (src, 0):
                continue
            if me == src:
                sends += [(0, f) for f in aggregate.pack(store.state_tensors(b))]
            else:
                incoming[b] = aggregate.empty_like_packed(store.state_tensors(b), "cpu")
                recvs += [(src, f) for f in incoming[b]]
        comm.exchange(sends, recvs)
    if me != 0:
        return None
    state: dict[str, torch.Tensor] = {}
    for part in store.all_parts():
        if part in incoming:
            tensors = [torch.empty_like(t, device="cpu") for t in store.state_tensors(part)]
            aggregate.unpack(incoming[part], tensors)
        else:
            tensors = [t.detach().cpu().clone() for t in store.state_tensors(part)]
        state.update(zip(store.state_names(part), tensors))
    return state


def assemble(comm: Communicator, store: PartStore, holders: dict[Part, tuple[int, ...]], scale: float,
             tag: str = "eval") -> nn.Module | None:
    """Collective: the whole global model on rank 0 only (for evaluation and the final model), with the
    partitioned residual branches scaled by ``scale`` (§2.6)."""
    state = gather_state(comm, store, holders, tag)
    if state is None:
        return None
    full = store.build_model()
    full.to_empty(device=store.device)
    full.load_state_dict({k: v for k, v in state.items() if "/" not in k})  # not (outer) momentum
    full.set_residual_scale(store.candidates, scale)
    return full


def evaluate_global(comm: Communicator, store: PartStore, holders: dict[Part, tuple[int, ...]], scale: float,
                    metric: Callable[[nn.Module], dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Collective: the metrics ``names`` of the assembled global model, computed on rank 0 by ``metric``,
    returned on every rank."""
    model = assemble(comm, store, holders, scale)
    values = torch.zeros(len(names), dtype=torch.float64)
    if model is not None:
        got = metric(model)
        values[:] = torch.tensor([got[n] for n in names], dtype=torch.float64)
        del model
    with comm.tag("control"):
        comm.broadcast(values, 0)
    return dict(zip(names, values.tolist()))
