"""What the trainer asks of an algorithm, and the helpers algorithms share (functions, not a superclass
to inherit behaviour from).

The trainer owns the loss, the optimizer and the learning-rate schedule; an algorithm owns a
:class:`~resist.algorithms.parts.PartStore` and decides which rank holds which part in a round, what
happens between backward and the optimizer step, and how a round ends. It reaches its peers only
through a :class:`~resist.comm.Communicator`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import torch
from torch import nn

from ..comm import Communicator
from ..config import AlgoConfig
from ..io import atomic_save
from ..plan import candidate_blocks, validate
from .parts import Part, PartStore, assemble, evaluate_global
from .shared import SharedSync

class Evaluator(Protocol):
    """How the trainer (its task) evaluates a model; algorithms decide which model that is."""

    names: tuple[str, ...]
    """The metrics, in the order every rank agrees on (e.g. ``test/top1``, ``test/top5``)."""

    def metric(self, model: nn.Module) -> dict[str, float]:
        """The test metrics of ``model`` (which the call may change: pass a model of its own)."""

    def predict(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per test set, (outputs, targets), float32 on the CPU; ``model`` is left as it was."""

    def score(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """The test metrics of outputs gathered from several models (an ensemble's average)."""


def make_store(comm: Communicator, build_model: Callable[[], nn.Module], device: torch.device, cfg: AlgoConfig,
               carry_momentum: bool, init_seed: int, outer: bool = False, outer_blocks: bool = True) -> PartStore:
    """A part store whose candidate blocks are those of ``cfg.partition``, checked against S and m."""
    model = build_model()
    cands = candidate_blocks(model.partitionable, model.skippable, cfg.partition)
    validate(comm.world_size, len(cands), cfg.min_depth)
    return PartStore(build_model, device, cands, carry_momentum, init_seed, outer, outer_blocks)


class Algorithm(ABC):
    """One rank's side of a training algorithm (SPMD: every rank runs the same calls)."""

    # What the algorithm can do (``resist.registry.CAPABILITIES`` says what each means). Config validation
    # reads these from the source without importing torch, so each is a literal.
    #: Whether the run's whole state is the global model (so that a checkpoint can hold it).
    checkpointable: ClassVar[bool] = True
    #: Whether it deals the partitionable blocks out to sub-networks (``plan.make_plan``).
    partitions: ClassVar[bool] = False
    #: Whether it can train whole-network rounds first and last (``warmup_epochs``, ``cooldown_epochs``);
    #: if so its constructor takes ``warmup_rounds`` and ``cooldown_from``.
    uses_warmup: ClassVar[bool] = False
    #: Whether its rounds end in an average of the parts, which an outer optimizer can step.
    supports_outer: ClassVar[bool] = False
    #: Whether it can send its synchronization compressed (``compress``).
    compressible: ClassVar[bool] = False
    #: Whether it can average BatchNorm statistics less often than the parameters (``bn_sync_every``).
    defers_bn_sync: ClassVar[bool] = False
    #: Whether its plan can follow the workers' measured speeds (``balance``).
    balances: ClassVar[bool] = False
    #: Whether it averages gradients after every step (momentum persists; it compresses gradients).
    syncs_every_step: ClassVar[bool] = False
    #: Whether it averages its members' class scores at evaluation (classification only).
    classification_only: ClassVar[bool] = False
    #: Whether it cuts the model into fragments synchronized on a staggered schedule (``fragments``,
    #: ``sync_delay``, ``mix_alpha``).
    fragmented: ClassVar[bool] = False
    #: Whether it can go on through lost and joining workers (``--runtime elastic``): it then has
    #: ``reconfigure(comm)`` and ``join()``, and its shared bucket is ``store.flats["shared"]``.
    elastic: ClassVar[bool] = False
    #: Whether it can run a round's synchronization behind the first ``overlap`` steps of the next round
    #: (``overlap``; docs/streaming.md); if so it may grow the trained sub-network mid-round
    #: (:meth:`joined`).
    overlaps: ClassVar[bool] = False

    comm: Communicator
    store: PartStore

    @abstractmethod
    def start(self, round_: int, state: dict[str, torch.Tensor] | None = None) -> None:
        """Materialize what this rank holds at ``round_``: freshly initialized, or from a full state dict."""

    @abstractmethod
    def begin_round(self, round_: int) -> None:
        """Prepare the model for this round's local steps (which blocks run, their residual scale)."""

    def round_length(self, round_: int, steps: int, last: bool) -> None:
        """Before :meth:`begin_round`: the local steps ``round_`` takes on this rank and whether it is the
        run's last (an algorithm that sends before a round ends needs both: ResIST's ``prefetch``)."""

    def after_backward(self) -> None:
        """Between backward and the optimizer step (data parallel all-reduces gradients here)."""

    def after_step(self, round_: int, step: int) -> None:
        """After the optimizer step of this round's local step ``step`` (0-based): where an algorithm
        that synchronizes inside a round starts or finishes it (Streaming DiLoCo's fragments)."""

    def joined(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Parameters that started training since the last call (ResIST's overlap: incoming blocks join
        at step tau), by name; the trainer adds them to the round's optimizer. Asked after every step."""
        return []

    def restarts(self) -> bool:
        """Whether the optimizer's state restarts now (ResIST's ``overlap_restart``: at the merge of step
        tau); the trainer then builds it afresh over what this rank holds. Asked after every step."""
        return False

    def local_steps(self, round_: int) -> int | None:
        """Local steps this rank takes in ``round_``; None: the configured ``local_iters``."""
        return None

    def observe(self, round_: int, seconds: list[float], steps: list[int]) -> None:
        """Every worker's compute time and local steps in ``round_`` (the same on every rank), before the
        round's synchronization: what a plan that follows the workers' speeds learns from."""

    def depths(self, round_: int) -> list[int] | None:
        """Partitioned blocks each worker's sub-network held in ``round_`` (None: no plan deals them)."""
        return None

    def replay(self, rows: list[dict]) -> None:
        """Before :meth:`start` on resume: re-derive what :meth:`observe` learned from the recorded
        rounds (``metrics.jsonl``'s rows), so that the plans continue as if never interrupted."""

    @abstractmethod
    def end_round(self, round_: int, final: bool = False) -> None:
        """Synchronize after ``round_`` (``final``: the last round of the run)."""

    @abstractmethod
    def holders_now(self) -> dict[Part, tuple[int, ...]]:
        """Who holds each candidate block between rounds."""

    def eval_scale(self) -> float:
        """Residual-branch multiplier for partitioned blocks when the whole network runs (§2.6)."""
        return 1.0

    def evaluate(self, evaluator: Evaluator) -> dict[str, float]:
        """Collective: the test metrics of the assembled global model, on every rank."""
        return evaluate_global(self.comm, self.store, self.holders_now(), self.eval_scale(), evaluator.metric,
                               evaluator.names)

    #: The shared bucket's averaging extras (outer snapshot, compression), for algorithms that have them.
    sync: SharedSync | None = None

    def rank_state(self) -> dict[str, torch.Tensor]:
        """State of this rank alone that a checkpoint must keep (e.g. error-feedback residuals); the same
        keys and shapes on every rank."""
        return self.sync.rank_state() if self.sync is not None else {}

    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`rank_state` from a checkpoint written with the same number of workers."""
        if self.sync is not None:
            self.sync.load_rank_state(state)

    def gather_state(self, tag: str = "checkpoint") -> dict[str, torch.Tensor] | None:
        from .parts import gather_state

        return gather_state(self.comm, self.store, self.holders_now(), tag)

    def save_final(self, out_dir: Path) -> None:
        """Collective: write the global model as ``model.pt`` (a plain state dict) from rank 0."""
        model = assemble(self.comm, self.store, self.holders_now(), self.eval_scale())
        if model is not None:
            atomic_save(model.state_dict(), Path(out_dir) / "model.pt")
