"""The part store: which parts of the global model one rank holds, and their state.

A worker builds the architecture on the ``meta`` device (no memory) and materializes only the parts it
holds: the stem, the head, the shared blocks, and the partitioned blocks of its current sub-network
(paper §2.5, Fig. 3). A part is ``"stem"``, ``"head"`` or a block index. Every part is initialized
from a seed of its own, so any rank can create any part identically without communication
(:func:`resist.models.protocol.init_part`, with the model's own initialization).

Every held tensor lives in a flat buffer per dtype of its bucket (``"shared"``, or a block index), so
that synchronization sends and all-reduces those buffers as they are, with no copies (as DDP's buckets
and apex's flat parameters do). A part's state is its parameters, its buffers (BatchNorm statistics)
and, where momentum persists across rounds, its momentum.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .. import aggregate
from ..comm import Communicator
from ..comm.codecs import Codec, make_codec
from ..config import AlgoConfig
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


class PartStore:
    """One rank's parts of the global model: holding, flat buffers, state, and loading from a checkpoint.

    ``candidates`` are the blocks an algorithm may deal out; every other part is shared. With
    ``carry_momentum`` each held parameter has a momentum tensor that belongs to its part's state; with
    ``outer`` it also has an outer-optimizer momentum (part of its state, checkpointed) and a copy of
    its value at the start of the round (:meth:`snapshot`; not state: a round starts from the state).
    """

    def __init__(self, build_model: Callable[[], nn.Module], device: torch.device, candidates: tuple[int, ...],
                 carry_momentum: bool, init_seed: int, outer: bool = False) -> None:
        self.build_model, self.device, self.init_seed = build_model, device, init_seed
        #: Bytes every state tensor's view is aligned to in its bucket (0: packed tight; see ``alignment``).
        self.align = alignment(device)
        self.model = build_model()
        self.candidates = tuple(candidates)
        cset = set(self.candidates)
        self.shared_parts: list[Part] = ["stem", "head"] + [i for i in range(len(self.model.blocks)) if i not in cset]
        self.carry = carry_momentum
        self.momentum: dict[str, torch.Tensor] = {}
        self.outer = outer
        self.outer_momentum: dict[str, torch.Tensor] = {}
        self.round_start: dict[str, torch.Tensor] = {}
        self.flats: dict[Part, list[torch.Tensor]] = {}
        #: Per bucket, how many leading values of its float32 buffer are parameters: what a codec may
        #: compress (BatchNorm statistics, integer counters and momenta travel exactly).
        self.lossy: dict[Part, int] = {}
        #: Per bucket, how many float32 BatchNorm statistics follow those parameters in that buffer (its
        #: other-dtype buffers, BatchNorm's batch counters, are statistics too).
        self.stats: dict[Part, int] = {}

    # --- holding ---------------------------------------------------------------------------------
    def module(self, part: Part) -> nn.Module:
        return part_module(self.model, part)

    def prefix(self, part: Part) -> str:
        return f"blocks.{part}." if isinstance(part, int) else f"{part}."

    def held(self, part: Part) -> bool:
        return not next(self.module(part).parameters()).is_meta

    def all_parts(self) -> list[Part]:
        return self.shared_parts + list(self.candidates)

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
            if self.outer:
                self.outer_momentum[name] = torch.zeros_like(p)

    def release(self, part: Part) -> None:
        for name in self._param_names(part):
            for state in (self.momentum, self.outer_momentum, self.round_start):
                state.pop(name, None)
        self.flats.pop(part, None)
        self.module(part).to("meta")

    def start(self, parts: list[Part], state: dict[str, torch.Tensor] | None) -> None:
        """Materialize ``parts``: freshly initialized, or from a full state dict (a checkpoint)."""
        for part in parts:
            self.materialize(part, init=state is None)
            if state is not None:
                self.load_part(part, state)

    # --- state -----------------------------------------------------------------------------------
    def _slots(self, parts: list[Part], outer: bool) -> list[tuple[Callable[[torch.Tensor], None], torch.Tensor]]:
        """Each state tensor of ``parts`` with a way to replace it: every part's parameters first, then
        their buffers, then momenta, so that a bucket's float buffer begins with all its parameters
        (:meth:`lossy_numel`: what a codec may compress)."""
        params, buffers, extra = [], [], []
        for part in parts:
            module = self.module(part)
            for m in module.modules():
                for n, p in m._parameters.items():
                    if p is not None:
                        params.append((lambda v, m=m, n=n, g=p.requires_grad:
                                       m._parameters.__setitem__(n, nn.Parameter(v, requires_grad=g)), p.data))
            for m in module.modules():
                for n, b in m._buffers.items():
                    if b is not None:
                        buffers.append((lambda v, m=m, n=n: m._buffers.__setitem__(n, v), b))
            for kept, wanted in ((self.momentum, self.carry), (self.outer_momentum, self.outer and outer)):
                if wanted:
                    for n, p in zip(self._param_names(part), module.parameters()):
                        extra.append((lambda v, n=n, kept=kept: kept.__setitem__(n, v),
                                      kept.get(n, torch.empty_like(p, device="meta"))))
        return params + buffers + extra

    @torch.no_grad()
    def bucket(self, key: Part, parts: list[Part], fresh: bool = False, outer: bool = True) -> None:
        """Put the state tensors of ``parts`` into one flat buffer per dtype, filed under ``key``; the
        parameters, buffers and momentum become views into it. ``fresh``: allocate without copying,
        for a part about to be overwritten. ``outer=False`` leaves the outer momentum out of the bucket
        (for parts that every rank holds: it is the same everywhere, so it need not travel)."""
        slots = self._slots(parts, outer)
        a = self.align
        self.lossy[key] = sum(aggregate.span(p, a) for part in parts for p in self.module(part).parameters()
                              if p.dtype == torch.float32)
        self.stats[key] = sum(aggregate.span(b, a) for part in parts for b in self.module(part).buffers()
                              if b.dtype == torch.float32)
        tensors = [t for _, t in slots]
        flats = aggregate.empty_like_packed(tensors, self.device, a) if fresh else aggregate.pack(tensors, a)
        for (point, _), view in zip(slots, aggregate.views(flats, tensors, a)):
            point(view)
        self.flats[key] = flats

    def state_tensors(self, part: Part) -> list[torch.Tensor]:
        """The state of ``part``: parameters, BatchNorm buffers and, where kept, momentum and outer
        momentum (in :meth:`state_names` order)."""
        module = self.module(part)
        out = tensors_of(module)
        for kept, wanted in ((self.momentum, self.carry), (self.outer_momentum, self.outer)):
            if wanted:
                out += [kept.get(n, torch.empty_like(p, device="meta"))
                        for n, p in zip(self._param_names(part), module.parameters())]
        return out

    def state_names(self, part: Part) -> list[str]:
        """Names of :meth:`state_tensors` in a checkpoint: state-dict keys, then ``momentum/<param>``."""
        module, prefix = self.module(part), self.prefix(part)
        names = [prefix + n for n, _ in module.named_parameters()] + [prefix + n for n, _ in module.named_buffers()]
        if self.carry:
            names += ["momentum/" + prefix + n for n, _ in module.named_parameters()]
        if self.outer:
            names += ["outer_momentum/" + prefix + n for n, _ in module.named_parameters()]
        return names

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

    @torch.no_grad()
    def outer_step(self, parts: Iterable[Part], lr: float, momentum: float, nesterov: bool) -> None:
        """DiLoCo's outer SGD on the parameters of ``parts``: the change since the round began is the
        pseudo-gradient g = start - now; m <- momentum m + g; now <- start - lr (g + momentum m) with
        Nesterov, else start - lr m. BatchNorm statistics are not stepped.

        The step is affine in the parameters, so applying it to each holder's own copy and then
        averaging the copies (and their outer momenta) equals averaging first and stepping once."""
        for part in parts:
            for name, p in zip(self._param_names(part), self.module(part).parameters()):
                start, m = self.round_start[name], self.outer_momentum[name]
                g = start - p
                m.mul_(momentum).add_(g)
                p.copy_(start - lr * (g + momentum * m if nesterov else m))

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


def all_reduce_flats(comm: Communicator, flats: Sequence[torch.Tensor], codec: Codec | None = None,
                     lossy: int = 0, key: tuple[int, ...] = (), stats: int | None = None) -> None:
    """Average flat buffers over all ranks, in place (one all-reduce per dtype buffer); with a codec,
    the first ``lossy`` values of the first (float32) buffer travel encoded.

    ``stats``: leave the BatchNorm statistics alone (a round that does not average them, ``bn_sync_every``):
    the ``stats`` float32 values after the ``lossy`` parameters and every other-dtype buffer stay as
    each rank has them, and only the parameters (and momenta) travel."""
    if stats is None:
        for i, f in enumerate(flats):
            comm.all_reduce_coded(f, codec, lossy if i == 0 and f.dtype == torch.float32 else 0, key)
        return
    f = flats[0]
    comm.all_reduce_coded(f[:lossy], codec, lossy, key)
    if f.numel() > lossy + stats:
        comm.all_reduce(f[lossy + stats:], average=True)


class UpdateCompression:
    """Compressed *updates* of the shared bucket (the parts every rank holds, all-reduced each round):
    what travels is the change since the round began, θ - θ_start, which every rank can add back
    because every rank starts the round from the same θ_start; small changes quantize far better than
    the weights themselves (DiLoCo-style systems send updates at 2-8 bits).

    With ``error_feedback`` what compression dropped from this rank's contribution (what it sent minus
    the decoding of exactly the payloads it encoded, per shard of the compressed all-reduce) is kept
    and added to the next round's update (Seide et al. 2014, Karimireddy et al. 2019). That residual is
    this rank's alone; checkpoints keep every rank's (see :meth:`residuals`). Blocks that move between
    holders travel as weights (their receiver may not know θ_start)."""

    def __init__(self, codec: Codec, error_feedback: bool) -> None:
        self.codec, self.error_feedback = codec, error_feedback
        self.start: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None

    def begin_round(self, store: PartStore) -> None:
        self.start = store.flats["shared"][0][:store.lossy["shared"]].clone()

    @torch.no_grad()
    def all_reduce(self, comm: Communicator, store: PartStore, key: tuple[int, ...], bn: bool = True) -> None:
        """Average the shared bucket over all ranks, its parameters sent as compressed updates; without
        ``bn`` the BatchNorm statistics stay as each rank has them."""
        assert self.start is not None, "begin_round() first"
        flats, lossy = store.flats["shared"], store.lossy["shared"]
        f = flats[0]
        exact = lossy if bn else lossy + store.stats["shared"]  # where the values that travel exactly begin
        sent = f[:lossy] - self.start
        dropped = None
        if self.error_feedback:
            if self.residual is not None:
                sent += self.residual
            dropped = torch.empty_like(sent)
        travelling = torch.cat([sent, f[exact:]])
        comm.all_reduce_coded(travelling, self.codec, lossy, key, dropped)
        if dropped is not None:
            self.residual = dropped
        f[:lossy].copy_(self.start + travelling[:lossy])
        f[exact:].copy_(travelling[lossy:])
        for g in flats[1:] if bn else []:
            comm.all_reduce(g, average=True)

    def residuals(self) -> dict[str, torch.Tensor]:
        """This rank's state for a checkpoint (written after a round, when the residual exists)."""
        if not self.error_feedback:
            return {}
        assert self.residual is not None, "a checkpoint follows a round"
        return {"residual": self.residual}

    def load_residuals(self, state: dict[str, torch.Tensor]) -> None:
        if self.error_feedback:
            self.residual = state["residual"].clone()


class SharedSync:
    """What an algorithm that averages the shared bucket at the end of each round does around it: the
    round-start snapshot for an outer step, the codec, with compressed updates and their residuals
    where asked for (``cfg.compress``, ``cfg.compress_what``, ``cfg.error_feedback``), and BatchNorm
    statistics averaged only every ``cfg.bn_sync_every`` rounds (paper §5: 1300 on ImageNet).

    Between those rounds each rank's statistics are its own, so a checkpoint keeps every rank's
    (:meth:`rank_state`); running statistics never enter a training step (BatchNorm trains on batch
    statistics), so they change evaluations only, never the parameters."""

    def __init__(self, store: PartStore, cfg: AlgoConfig, seed: int) -> None:
        self.store, self.outer, self.seed = store, cfg.outer, seed
        self.codec = make_codec(cfg.compress, cfg.keep_fraction, cfg.chunk)
        self.update = (UpdateCompression(self.codec, cfg.error_feedback)
                       if self.codec is not None and cfg.compress_what == "update" else None)
        self.syncs_bn = cfg.syncs_bn
        self.local_stats = cfg.bn_sync_every > 1

    def begin_round(self) -> None:
        if self.outer:
            self.store.snapshot()
        if self.update is not None:
            self.update.begin_round(self.store)

    def all_reduce(self, comm: Communicator, round_: int) -> None:
        """Average the shared bucket over all ranks (compressed as configured; its BatchNorm statistics
        only in the rounds that average them)."""
        key, bn = (self.seed, round_, -1), self.syncs_bn(round_)
        if self.update is not None:
            self.update.all_reduce(comm, self.store, key, bn)
        else:
            all_reduce_flats(comm, self.store.flats["shared"], self.codec, self.store.lossy["shared"], key,
                             None if bn else self.store.stats["shared"])

    def rank_state(self) -> dict[str, torch.Tensor]:
        state = self.update.residuals() if self.update is not None else {}
        if self.local_stats:
            state.update(statistics_state(self.store))
        return state

    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.update is not None:
            self.update.load_residuals(state)
        if self.local_stats:
            load_statistics_state(self.store, state)


def statistics_state(store: PartStore) -> dict[str, torch.Tensor]:
    """This rank's BatchNorm statistics of every part of the model, zeros for the parts it does not
    hold, and which parts it holds: tensors of the same shapes on every rank (a checkpoint gathers them)."""
    floats, counts, held = [], [], []
    for part in store.all_parts():
        mine = store.held(part)
        held.append(int(mine))
        for b in store.module(part).buffers():
            flat = b.detach().reshape(-1) if mine else torch.zeros(b.numel(), dtype=b.dtype, device=store.device)
            (floats if b.is_floating_point() else counts).append(flat)
    none = torch.zeros(0, device=store.device)
    return {"bn_stats": torch.cat([none, *floats]).float(), "bn_counts": torch.cat([none.long(), *counts]).long(),
            "bn_held": torch.tensor(held, dtype=torch.int64, device=store.device)}


@torch.no_grad()
def load_statistics_state(store: PartStore, state: dict[str, torch.Tensor]) -> None:
    """Put back the statistics of :func:`statistics_state` into the parts this rank held then and holds
    now (a resume at the same round with the same workers: the same parts)."""
    at = {"float": 0, "int": 0}
    for part, was in zip(store.all_parts(), state["bn_held"].tolist()):
        mine = store.held(part)
        for b in store.module(part).buffers():
            kind, source = ("float", state["bn_stats"]) if b.is_floating_point() else ("int", state["bn_counts"])
            if was and mine:
                b.copy_(source[at[kind]:at[kind] + b.numel()].view_as(b))
            at[kind] += b.numel()
