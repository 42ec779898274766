"""One rank's slice of the global model, its optimizer and its SGD steps.

A worker builds the architecture on the ``meta`` device (no memory) and materializes only the parts it
holds: the stem, the head, the shared blocks, and the partitioned blocks of its current sub-ResNet
(paper §2.5, Fig. 3: no worker stores the whole model). A part is ``"stem"``, ``"head"`` or a block
index. Every part is initialized from its own seed, so any rank can create any part identically
without communication.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import aggregate
from ..comm import Communicator
from ..config import Config
from ..io import atomic_save
from ..plan import candidate_blocks, validate
from .evaluation import accuracy

Part = Union[str, int]


def part_module(model: nn.Module, part: Part) -> nn.Module:
    return model.blocks[part] if isinstance(part, int) else getattr(model, part)


@torch.no_grad()
def init_part(model: nn.Module, part: Part, seed: int, device: torch.device | str = "cpu") -> None:
    """Allocate ``part`` of ``model`` and give it its initialization, drawn on the CPU from a seed of
    its own: the same on every rank and device, whoever holds the part."""
    module = part_module(model, part)
    key = part + 1 if isinstance(part, int) else (0 if part == "stem" else len(model.blocks) + 1)
    module.to_empty(device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 7919 + key)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    module.to(device)


def init_model(model: nn.Module, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """The whole global model as every algorithm initializes it (for references and tests)."""
    for part in ["stem", "head", *range(len(model.blocks))]:
        init_part(model, part, seed, device)
    return model


def tensors_of(module: nn.Module) -> list[torch.Tensor]:
    """Parameters (as plain tensors) then buffers, in registration order."""
    return [p.data for p in module.parameters()] + list(module.buffers())


class Worker:
    """State and local training shared by every algorithm; subclasses decide who holds what and how
    the round ends (:meth:`begin_round`, :meth:`end_round`)."""

    #: Whether the optimizer is rebuilt at every round (momentum restart) unless ``carry_momentum``.
    restarts_optimizer = True
    grads_in_place = False  # True where gradients are views of buffers that must outlive a step
    #: Whether the run's whole state is the global model (so that a checkpoint can hold it).
    checkpointable = True

    def __init__(self, comm: Communicator, cfg: Config, build_model: Callable[[], nn.Module],
                 device: torch.device, steps_per_epoch: int) -> None:
        self.comm, self.cfg, self.device = comm, cfg, device
        self.build_model = build_model
        self.model = build_model()
        self.steps_per_epoch = steps_per_epoch
        self.candidates = candidate_blocks(self.model.partitionable, self.model.skippable, cfg.algo.partition)
        validate(comm.world_size, len(self.candidates), cfg.algo.min_depth)
        self.shared_parts: list[Part] = ["stem", "head"] + [
            i for i in range(len(self.model.blocks)) if i not in set(self.candidates)]
        self.carry = cfg.algo.carry_momentum or not self.restarts_optimizer
        self.momentum: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        # Every held tensor lives in a flat buffer per dtype of its bucket ("shared", or a block
        # index), so that synchronization sends and all-reduces those buffers as they are: no copies.
        self.flats: dict[Part, list[torch.Tensor]] = {}
        #: Seed of the parts' initialization: the run's, so that every rank creates any part identically.
        self.init_seed = cfg.run.seed

    # --- parts -----------------------------------------------------------------------------------
    def module(self, part: Part) -> nn.Module:
        return part_module(self.model, part)

    def prefix(self, part: Part) -> str:
        return f"blocks.{part}." if isinstance(part, int) else f"{part}."

    def held(self, part: Part) -> bool:
        return not next(self.module(part).parameters()).is_meta

    @torch.no_grad()
    def materialize(self, part: Part, init: bool) -> None:
        """Allocate ``part``; with ``init``, fill it with its seeded initialization."""
        module = self.module(part)
        if init:
            init_part(self.model, part, self.init_seed, self.device)
        else:
            module.to_empty(device=self.device)
        for name, p in module.named_parameters(prefix=self.prefix(part).rstrip(".")):
            if self.carry:
                self.momentum[name] = torch.zeros_like(p)

    def _slots(self, parts: list[Part]) -> list[tuple[Callable[[torch.Tensor], None], torch.Tensor]]:
        """Each state tensor of ``parts`` (in :meth:`state_tensors` order) with a way to replace it."""
        slots: list[tuple[Callable[[torch.Tensor], None], torch.Tensor]] = []
        for part in parts:
            module = self.module(part)
            for m in module.modules():
                for n, p in m._parameters.items():
                    if p is not None:
                        slots.append((lambda v, m=m, n=n, g=p.requires_grad:
                                      m._parameters.__setitem__(n, nn.Parameter(v, requires_grad=g)), p.data))
            for m in module.modules():
                for n, b in m._buffers.items():
                    if b is not None:
                        slots.append((lambda v, m=m, n=n: m._buffers.__setitem__(n, v), b))
            if self.carry:
                for n, p in module.named_parameters(prefix=self.prefix(part).rstrip(".")):
                    slots.append((lambda v, n=n: self.momentum.__setitem__(n, v),
                                  self.momentum.get(n, torch.empty_like(p, device="meta"))))
        return slots

    @torch.no_grad()
    def bucket(self, key: Part, parts: list[Part], fresh: bool = False) -> None:
        """Put the state tensors of ``parts`` into one flat buffer per dtype, filed under ``key``; the
        parameters, buffers and momentum become views into it (as DDP's buckets and apex's flat
        parameters do). ``fresh``: allocate without copying, for a part about to be overwritten."""
        slots = self._slots(parts)
        tensors = [t for _, t in slots]
        flats = aggregate.empty_like_packed(tensors, self.device) if fresh else aggregate.pack(tensors)
        for (point, _), view in zip(slots, aggregate.views(flats, tensors)):
            point(view)
        self.flats[key] = flats

    def release(self, part: Part) -> None:
        module = self.module(part)
        for name, _ in module.named_parameters(prefix=self.prefix(part).rstrip(".")):
            self.momentum.pop(name, None)
        self.flats.pop(part, None)
        module.to("meta")

    def state_tensors(self, part: Part) -> list[torch.Tensor]:
        """What synchronizes for ``part``: parameters, BatchNorm buffers and, if carried, momentum."""
        module = self.module(part)
        out = tensors_of(module)
        if self.carry:
            names = [n for n, _ in module.named_parameters(prefix=self.prefix(part).rstrip("."))]
            out += [self.momentum.get(n, torch.empty_like(p, device="meta"))
                    for n, p in zip(names, module.parameters())]
        return out

    def all_parts(self) -> list[Part]:
        return self.shared_parts + list(self.candidates)

    # --- local training --------------------------------------------------------------------------
    def new_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        named = [(n, p) for n, p in self.model.named_parameters() if not p.is_meta]
        opt = torch.optim.SGD([p for _, p in named], lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if self.carry and o.momentum > 0:
            # SGD's first step from a zero buffer equals its first step from none, so carried momentum
            # starts as zeros; the optimizer then updates these tensors in place.
            for n, p in named:
                opt.state[p]["momentum_buffer"] = self.momentum[n]
        return opt

    def lr_at(self, step: int, total_steps: int) -> float:
        """Step decay: the learning rate divided by 10 at each fraction in ``lr_decay_at`` (paper §5)."""
        passed = sum(step >= math.ceil(f * total_steps) for f in self.cfg.optim.lr_decay_at)
        return self.cfg.optim.lr * 0.1**passed

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step of this rank's (sub-)network on its batch; returns the loss."""
        assert self.optimizer is not None, "begin_round() first"
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=not self.grads_in_place)
        loss.backward()
        self.after_backward()
        self.optimizer.step()
        return loss.detach()

    def memory_bytes(self) -> int:
        """Bytes of model state this rank holds now: parameters, gradients, buffers, optimizer state."""
        tensors = [t for t in self.model.parameters() if not t.is_meta]
        tensors += [t.grad for t in tensors if t.grad is not None]
        tensors += [b for b in self.model.buffers() if not b.is_meta]
        if self.optimizer is not None:
            tensors += [v for st in self.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        seen = {id(t): t for t in tensors}  # carried momentum appears both in the optimizer and here
        return sum(t.numel() * t.element_size() for t in seen.values())

    def after_backward(self) -> None:
        """Hook between backward and the optimizer step (data parallel all-reduces gradients here)."""

    def begin_round(self, round_: int) -> None:
        # The held parameters change from round to round, so the optimizer is rebuilt; carried
        # momentum lives in ``self.momentum`` and survives the rebuild.
        self.optimizer = self.new_optimizer()

    def end_round(self, round_: int, final: bool = False) -> None:
        """Synchronize after ``round_`` (``final``: the last round of the run)."""
        raise NotImplementedError

    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        """Materialize what this rank holds at ``round_``: freshly initialized, or from a full state dict."""
        raise NotImplementedError

    # --- the global model ------------------------------------------------------------------------
    def eval_scale(self) -> float:
        """Residual-branch multiplier for partitioned blocks when the whole network runs (§2.6)."""
        return 1.0

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        """Who holds each candidate block between rounds (after :meth:`end_round`)."""
        raise NotImplementedError

    def state_names(self, part: Part) -> list[str]:
        """Names of :meth:`state_tensors` in a checkpoint: state-dict keys, then ``momentum/<param>``."""
        module, prefix = self.module(part), self.prefix(part)
        names = [prefix + n for n, _ in module.named_parameters()] + [prefix + n for n, _ in module.named_buffers()]
        if self.carry:
            names += ["momentum/" + prefix + n for n, _ in module.named_parameters()]
        return names

    @torch.no_grad()
    def gather_state(self, tag: str = "eval") -> dict[str, torch.Tensor] | None:
        """Collective: every parameter, BatchNorm buffer and carried momentum of the global model, as
        one flat dict on rank 0 (``None`` elsewhere). Each part comes from its lowest holder."""
        comm, me = self.comm, self.comm.rank
        holders = self.holders_now()
        sends, recvs, incoming = [], [], {}
        with comm.tag(tag):
            for b in self.candidates:
                src = holders[b][0]
                if 0 in holders[b] or me not in (src, 0):
                    continue
                if me == src:
                    sends += [(0, f) for f in aggregate.pack(self.state_tensors(b))]
                else:
                    incoming[b] = aggregate.empty_like_packed(self.state_tensors(b), "cpu")
                    recvs += [(src, f) for f in incoming[b]]
            comm.exchange(sends, recvs)
        if me != 0:
            return None
        state: dict[str, torch.Tensor] = {}
        for part in self.all_parts():
            if part in incoming:
                tensors = [torch.empty_like(t, device="cpu") for t in self.state_tensors(part)]
                aggregate.unpack(incoming[part], tensors)
            else:
                tensors = [t.detach().cpu().clone() for t in self.state_tensors(part)]
            state.update(zip(self.state_names(part), tensors))
        return state

    def assemble(self) -> nn.Module | None:
        """Collective: the whole global model, on rank 0 only (for evaluation and checkpoints), with the
        partitioned residual branches scaled by c (§2.6)."""
        state = self.gather_state()
        if state is None:
            return None
        full = self.build_model()
        full.to_empty(device=self.device)
        full.load_state_dict({k: v for k, v in state.items() if not k.startswith("momentum/")})
        full.set_residual_scale(self.candidates, self.eval_scale())
        return full

    def load_part(self, part: Part, state: dict[str, torch.Tensor]) -> None:
        """Fill a materialized ``part`` from a :meth:`gather_state` dict (a checkpoint)."""
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

    def evaluate(self, test_batches: Callable[[], Iterable], train_batches: Callable[[], Iterable]) -> float:
        """Collective: test accuracy of the assembled global model, returned on every rank."""
        model = self.assemble()
        acc = torch.zeros(1, dtype=torch.float64)
        if model is not None:
            acc[0] = accuracy(model, test_batches(), self.cfg.algo.bn_eval, train_batches, self.device)
            del model
        with self.comm.tag("control"):
            self.comm.broadcast(acc, 0)
        return float(acc[0])

    def save_final(self, out_dir) -> None:
        """Collective: write the global model as ``model.pt`` (a plain state dict) from rank 0."""
        model = self.assemble()
        if model is not None:
            atomic_save(model.state_dict(), Path(out_dir) / "model.pt")
