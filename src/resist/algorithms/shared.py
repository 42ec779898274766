"""Averaging the shared bucket (the parts every rank holds) at the end of a round, and what goes with
it: compressed updates with error feedback (paper Appendix A.5), BatchNorm statistics averaged only every
``bn_sync_every`` rounds (§5), and the round-start snapshot an outer optimizer steps from. Used by every
algorithm that averages whole buckets over all ranks (ResIST's shared layers, local SGD, DiLoCo)."""

from __future__ import annotations

from typing import Sequence

import torch

from ..comm import Communicator
from ..comm.codecs import Codec, make_codec
from ..config import AlgoConfig
from .buckets import BucketLayout
from .outer import OuterSGD
from .parts import PartStore


def all_reduce_flats(comm: Communicator, flats: Sequence[torch.Tensor], codec: Codec | None = None,
                     layout: BucketLayout = BucketLayout(), key: tuple[int, ...] = (), bn: bool = True) -> None:
    """Average flat buffers laid out as ``layout`` over all ranks, in place (one all-reduce per dtype
    buffer); with a codec, the parameters travel encoded.

    Without ``bn`` (a round that does not average BatchNorm statistics, ``bn_sync_every``) the
    statistics stay as each rank has them, and only the parameters (and momenta) travel."""
    if bn:
        for f, lossy in zip(flats, layout.lossy(flats)):
            comm.all_reduce_coded(f, codec, lossy, key)
        return
    f, lossy, exact = flats[0], layout.params, layout.exact_from(bn)
    comm.all_reduce_coded(f[:lossy], codec, lossy, key)
    if f.numel() > exact:
        comm.all_reduce(f[exact:], average=True)


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
        self.start = store.flats["shared"][0][:store.layouts["shared"].params].clone()

    @torch.no_grad()
    def all_reduce(self, comm: Communicator, store: PartStore, key: tuple[int, ...], bn: bool = True) -> None:
        """Average the shared bucket over all ranks, its parameters sent as compressed updates; without
        ``bn`` the BatchNorm statistics stay as each rank has them."""
        assert self.start is not None, "begin_round() first"
        flats, layout = store.flats["shared"], store.layouts["shared"]
        f, lossy, exact = flats[0], layout.params, layout.exact_from(bn)
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
        self.store, self.seed = store, seed
        #: The outer optimizer (None without one): its round starts at this class's snapshot.
        self.outer = OuterSGD(cfg.outer_lr, cfg.outer_momentum, cfg.outer_nesterov) if cfg.outer else None
        self.codec = make_codec(cfg.compress, cfg.keep_fraction, cfg.chunk)
        self.update = (UpdateCompression(self.codec, cfg.error_feedback)
                       if self.codec is not None and cfg.compress_what == "update" else None)
        self.syncs_bn = cfg.syncs_bn
        self.local_stats = cfg.bn_sync_every > 1

    def begin_round(self) -> None:
        if self.outer is not None:
            self.store.snapshot()
        if self.update is not None:
            self.update.begin_round(self.store)

    def outer_step(self, parts: list) -> None:
        """The outer optimizer's step on the parameters of ``parts`` (from their round-start values)."""
        assert self.outer is not None, "no outer optimizer configured"
        self.outer.step(self.store.outer_state(parts))

    def all_reduce(self, comm: Communicator, round_: int) -> None:
        """Average the shared bucket over all ranks (compressed as configured; its BatchNorm statistics
        only in the rounds that average them)."""
        key, bn = (self.seed, round_, -1), self.syncs_bn(round_)
        if self.update is not None:
            self.update.all_reduce(comm, self.store, key, bn)
        else:
            all_reduce_flats(comm, self.store.flats["shared"], self.codec, self.store.layouts["shared"], key, bn)

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
