"""Streaming DiLoCo (Douillard et al. 2025, https://arxiv.org/abs/2501.18512): local SGD whose model is
cut into fragments that are synchronized one after another, each behind the inner steps that follow it.

The rule, as torchft implements it (``torchft/local_sgd.py``: ``DiLoCo`` with ``fragment_sync_delay``
and ``fragment_update_alpha``, ``_StreamingDiLoCoFragment.prepare_sync`` / ``perform_sync`` /
``_merge_parameters``; read at pytorch/torchft 73dafea):

- The model's parts in order (stem, blocks 0..n-1, head) form F contiguous fragments of about equal
  parameter count (:func:`fragments_of`). A round is H = ``local_iters`` inner steps; with K = H / F,
  fragment f is *sent* after (f+1) K - tau of the round's steps and *merged* after (f+1) K steps
  (``--sync-delay`` tau < K), so each fragment is synchronized once per round, staggered, and the last
  one lands at the round's end: between rounds nothing is in flight (torchft: a fragment is prepared at
  local step ``sync_every / F - fragment_sync_delay`` and performed at ``sync_every / F``).
- Sending (step t): the fragment's state as this worker has it (parameters, BatchNorm statistics,
  carried momentum) is averaged over all workers: one all-reduce per dtype buffer, on a copy, started
  without waiting.
- Merging (step t + tau): with an outer optimizer, the averaged parameters give the pseudo-gradient
  g = global - average, where ``global`` is the fragment's global parameters after its previous merge
  (torchft's ``original_parameters``); DiLoCo's outer SGD (:class:`~resist.algorithms.outer.OuterSGD`:
  m <- mu m + g; global <- global - lr (g + mu m) with Nesterov, else global - lr m) gives the new
  global parameters; without one (lr 1, momentum 0) they are the average itself. The live weights,
  which have trained tau more steps meanwhile, become global + alpha (live - global) = (1 - alpha)
  global + alpha live (torchft's ``p.data.lerp_(local, fragment_update_alpha)`` after restoring ``p``
  to the new global parameters; computed here as a subtraction, a product and a sum, whose bits do
  not depend on how the tensors are laid out; alpha = 0 copies the global value). Float state that is averaged rather than stepped (BatchNorm statistics,
  carried momentum) mixes the same way with its average; integer counters take the average.

Staleness: a merged fragment carries the workers' average as it was tau steps earlier; with alpha = 0
the live fragment's last tau steps are dropped (replaced by the global value), with alpha > 0 a share
alpha of them is kept. tau = 0, alpha = 0 and F = 1 is DiLoCo (local SGD with the outer optimizer),
bit for bit (tested).

Overlap: on the torch.distributed runtime the all-reduce is a real asynchronous collective
(:meth:`Communicator.all_reduce_async`, ``async_op=True``), so the transfer runs while the next tau
steps compute; the in-process runtime completes it when it is waited for, which is numerically the
same because what travels is a copy taken at step t. Its bytes are counted on the ``sync`` tag like
every other synchronization. A merge due at the round's end happens in :meth:`end_round`, so the
trainer's ``comm_s`` is the wait that was not hidden behind compute; waits inside the round count as
that round's compute time.

Evaluation, ``model.pt`` and checkpoints hold the *global* model (every fragment's global parameters
and averaged statistics, which every worker agrees on). The live weights differ between workers, so a
checkpoint also keeps every worker's live state (:meth:`rank_state`); checkpoints are written at round
ends, where nothing is in flight, so resume is exact (tested). Resumed with another worker count, every
worker starts from the global model.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..aggregate import span
from ..comm import Communicator
from ..comm.base import Pending
from ..config import AlgoConfig
from .base import Algorithm, make_store
from .outer import OuterSGD
from .parts import Part, PartStore, gather_state


def fragments_of(sizes: Sequence[int], count: int) -> list[tuple[int, int]]:
    """Cut a sequence of part sizes into ``count`` contiguous, non-empty ranges ``(start, stop)`` whose
    totals are as near to equal as cutting at the cumulative total nearest to each k / count allows."""
    n = len(sizes)
    if not 1 <= count <= n:
        raise ValueError(f"cannot cut {n} parts into {count} fragments")
    cum = [0]
    for s in sizes:
        cum.append(cum[-1] + s)
    cuts = [0]
    for k in range(1, count):
        lo, hi = cuts[-1] + 1, n - (count - k)  # every fragment keeps at least one part
        target = cum[n] * k / count
        cuts.append(min(range(lo, hi + 1), key=lambda i: (abs(cum[i] - target), i)))
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def model_parts(model: nn.Module) -> list[Part]:
    """The parts of a model in forward order: the stem, every block, the head."""
    return ["stem", *range(len(model.blocks)), "head"]


def check_fragments(cfg: AlgoConfig, model: nn.Module) -> None:
    """A one-line ValueError if ``model`` has fewer parts than ``cfg.fragments``."""
    n = len(model_parts(model))
    if cfg.fragments > n:
        raise ValueError(f"--fragments {cfg.fragments} is more than the model's {n} parts (stem, "
                         f"{n - 2} blocks, head); use at most {n}")


class StreamingDiLoCo(Algorithm):
    """Local SGD with F fragments synchronized on a staggered schedule, each merged ``sync_delay`` steps
    after its all-reduce started, with mixing weight ``mix_alpha`` and DiLoCo's outer optimizer (see the
    module's docstring for the rule and its source)."""

    supports_outer = True
    fragmented = True

    def __init__(self, comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device,
                 cfg: AlgoConfig, seed: int) -> None:
        self.comm, self.cfg, self.seed = comm, cfg, seed
        self.outer = OuterSGD(cfg.outer_lr, cfg.outer_momentum, cfg.outer_nesterov) if cfg.outer else None
        self.store: PartStore = make_store(comm, build_model, device, cfg, cfg.carry_momentum, seed,
                                           outer=cfg.outer)
        model = self.store.model
        check_fragments(cfg, model)
        if any(p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("streaming_diloco steps float32 parameters only")
        parts = model_parts(model)
        sizes = [sum(p.numel() for p in self.store.module(q).parameters()) for q in parts]
        self.fragments: list[list[Part]] = [parts[a:b] for a, b in fragments_of(sizes, cfg.fragments)]
        self.keys = [f"fragment{f}" for f in range(len(self.fragments))]
        period = cfg.local_iters // cfg.fragments
        #: completed steps of the round after which fragment f is sent, and merged
        self.send_at = [(f + 1) * period - cfg.sync_delay for f in range(cfg.fragments)]
        self.merge_at = [(f + 1) * period for f in range(cfg.fragments)]
        self.everyone = tuple(range(comm.world_size))
        self.glob: list[list[torch.Tensor]] = []
        self.outer_m: list[torch.Tensor] = []
        self.pending: dict[int, tuple[list[torch.Tensor], list[Pending]]] = {}
        self.sent: set[int] = set()

    # --- holding -----------------------------------------------------------------------------------
    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        store = self.store
        store.start(store.all_parts(), state)
        self.glob, self.outer_m = [], []
        for key, parts in zip(self.keys, self.fragments):
            # Outer momentum is the same on every rank, so it stays out of the buffers that travel.
            store.bucket(key, parts, outer=False)
            glob = [f.clone() for f in store.flats[key]]
            self.glob.append(glob)
            for i, g in enumerate(glob):  # counted as model state, as DiLoCo's round-start copy is
                store.round_start[f"{key}/global/{i}"] = g
            if store.outer:  # one flat outer momentum laid out as the parameters are (views kept in the store)
                names = [n for q in parts for n in store._param_names(q)]
                tensors = [store.outer_momentum[n] for n in names]
                flat = torch.zeros(store.layouts[key].params, dtype=torch.float32, device=store.device)
                offset = 0
                for n, t in zip(names, tensors):
                    view = flat[offset:offset + t.numel()].view_as(t)
                    view.copy_(t)
                    store.outer_momentum[n] = view
                    offset += span(t, store.align)
                self.outer_m.append(flat)

    def begin_round(self, round_: int) -> None:
        assert not self.pending, "a fragment is in flight across a round boundary"
        self.sent = set()

    # --- the schedule --------------------------------------------------------------------------------
    def after_step(self, round_: int, step: int) -> None:
        done = step + 1  # steps of this round completed
        for f in range(len(self.fragments)):
            if self.send_at[f] == done and done < self.cfg.local_iters:
                self._send(f)
        for f in range(len(self.fragments)):
            if self.merge_at[f] == done and done < self.cfg.local_iters:
                self._merge(f)

    @torch.no_grad()
    def end_round(self, round_: int, final: bool = False) -> None:
        # Normally only the last fragment is left: sent tau steps before the end, or now with tau = 0.
        # A short last round (the schedule's end) sends the fragments its steps did not reach, so that
        # every round ends with each fragment merged once and nothing in flight.
        for f in range(len(self.fragments)):
            if f not in self.sent:
                self._send(f)
        for f in sorted(self.pending):
            self._merge(f)

    @torch.no_grad()
    def _send(self, f: int) -> None:
        copies = [t.clone() for t in self.store.flats[self.keys[f]]]
        self.pending[f] = (copies, [self.comm.all_reduce_async(t, average=True) for t in copies])
        self.sent.add(f)

    @torch.no_grad()
    def _merge(self, f: int) -> None:
        average, works = self.pending.pop(f)
        for w in works:
            w.wait()
        c, key = self.cfg, self.keys[f]
        live, glob, n = self.store.flats[key], self.glob[f], self.store.layouts[key].params
        if self.outer is not None:
            # DiLoCo's outer step from the fragment's global parameters, written into the average's
            # parameters, which then become the global ones with the rest of the average.
            self.outer.step([(average[0][:n], glob[0][:n], self.outer_m[f])])
        for g_, a in zip(glob, average):
            g_.copy_(a)
        for l_, g_ in zip(live, glob):
            if c.mix_alpha == 0 or not l_.is_floating_point():
                l_.copy_(g_)
            else:
                l_.copy_(g_ + (l_ - g_) * c.mix_alpha)  # torch.lerp(g_, l_, alpha), in ops whose bits never depend on the layout

    # --- the global model --------------------------------------------------------------------------------
    class _Global:
        """Inside: this rank's store holds the global model (its live state is put back on leaving)."""

        def __init__(self, algo: "StreamingDiLoCo") -> None:
            self.algo = algo

        def __enter__(self) -> None:
            a = self.algo
            self.saved = [[t.clone() for t in a.store.flats[k]] for k in a.keys]
            for k, glob in zip(a.keys, a.glob):
                for t, g in zip(a.store.flats[k], glob):
                    t.copy_(g)

        def __exit__(self, *exc) -> None:
            a = self.algo
            for k, saved in zip(a.keys, self.saved):
                for t, s in zip(a.store.flats[k], saved):
                    t.copy_(s)

    def evaluate(self, evaluator):
        with torch.no_grad(), self._Global(self):
            return super().evaluate(evaluator)

    def gather_state(self, tag: str = "checkpoint") -> dict[str, torch.Tensor] | None:
        with torch.no_grad(), self._Global(self):
            return gather_state(self.comm, self.store, self.holders_now(), tag)

    def save_final(self, out_dir) -> None:
        with torch.no_grad(), self._Global(self):
            super().save_final(out_dir)

    def rank_state(self) -> dict[str, torch.Tensor]:
        """This rank's live state (the workers' live weights differ between merges)."""
        return {f"{k}/live/{i}": t for k in self.keys for i, t in enumerate(self.store.flats[k])}

    @torch.no_grad()
    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.keys:
            for i, t in enumerate(self.store.flats[k]):
                t.copy_(state[f"{k}/live/{i}"])

    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        return {b: self.everyone for b in self.store.candidates}
