"""The training loop every algorithm shares: rounds of ``local_iters`` steps, synchronization,
periodic evaluation of the assembled global model, metrics (paper Algorithm 1, §2.3 and §5).

:func:`run_worker` is SPMD: every rank of either runtime runs it with its own communicator.
:func:`train` sets up the run folder (:mod:`.runfolder`) and starts the ranks on the chosen runtime;
:mod:`.schedule` counts the steps and rounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..algorithms import Algorithm
from ..algorithms.base import Evaluator
from ..comm import Communicator, run_in_process
from ..comm import CommError
from ..comm.launch import check_backend, check_port
from ..config import Config
from ..data import BadImages, BatchSource, DataSource, DatasetError
from .. import rundir
from ..io import NO_SPACE, NoSpaceError, atomic_write_json
from ..models.protocol import step_costs
from ..plan import candidate_blocks, check_dealing, validate
from ..registry import algorithm_class
from ..faults import fire, from_env, slowdown
from . import checkpoint
from .metrics import MetricsWriter, check_loggers
from ..tasks import Task, make_task
from .optim import Precision, add_parameters, lr_at, make_optimizer, train_step
from .runfolder import agree_on_resume, claim_run_folder, finished_summary, prepare_run_dir, resume_point
from .schedule import ResumePoint, Schedule, resume_point_in

from .build import build_algorithm, load_data, model_builder, num_classes_of, resolve_device, setup_logging  # noqa: F401

log = logging.getLogger("resist")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a failed peer); the message says what to do."""


def check(cfg: Config, dataset: DataSource) -> Schedule:
    """Everything that can be wrong with a config for this dataset, found before any rank starts."""
    resolve_device(cfg.run.device)
    local_ranks = cfg.algo.workers if cfg.run.runtime == "dist" and not under_torchrun() else None
    check_backend(cfg.run.backend, local_ranks)  # under torchrun the ranks may span nodes
    if cfg.run.runtime == "dist" and cfg.run.master_port and not under_torchrun():
        check_port(cfg.run.master_port)
    build = model_builder(cfg, num_classes_of(cfg, dataset))
    try:
        model = build()
    except TypeError as e:
        if cfg.model.layers is not None and "'layers'" in str(e):  # a fixed-depth model, e.g. yolo_resnet101
            raise ValueError(f"model {cfg.model.name} has a fixed depth; drop --layers (a preset's: "
                             f"--set model.layers=null)") from None
        if cfg.model.stem is not None and "stem" in str(e):
            raise ValueError(f"model {cfg.model.name} has no stem to choose; drop --stem") from None
        raise ValueError(f"model {cfg.model.name} cannot be made with num_classes, width"
                         f"{''.join(', ' + k for k in ('layers', 'stem') if getattr(cfg.model, k) is not None)} ({e}); "
                         f"a factory takes them as keywords") from None
    cands = candidate_blocks(model.partitionable, model.skippable, cfg.algo.partition)
    validate(cfg.algo.workers, len(cands), cfg.algo.min_depth)
    check_dealing(cfg.algo.name, cfg.algo.workers, len(cands), cfg.algo.min_depth)
    if cfg.algo.fragments > 1:  # Streaming DiLoCo: at least one part (stem, block, head) per fragment
        from ..algorithms.streaming import check_fragments

        check_fragments(cfg.algo, model)
    return Schedule.of(cfg, dataset.n_train)


@dataclass
class Worker:
    """What one rank carries from round to round of :func:`run_worker`."""

    comm: Communicator
    cfg: Config
    out: Path | None
    sched: Schedule
    algo: Algorithm
    task: Task
    device: torch.device
    stream: BatchSource
    """Augmented training batches."""
    plain: BatchSource
    """The same shard unaugmented, for BatchNorm recalibration (§2.6)."""
    evaluator: Evaluator
    bad: BadImages
    faults: Any
    precision: Precision
    layout: torch.memory_format
    progress: dict[str, float]
    """Parallel training time, wall time, best score and its time: written into checkpoints as it is."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    first_round: int = 0
    point: ResumePoint | None = None
    writer: MetricsWriter | None = None
    started: float = 0.0
    state_bytes: int = 0
    stopped: dict[str, float] | None = None
    """Where ``--stop-at`` ended the run: its round, the target and the score that reached it."""

    def is_last(self, r: int) -> bool:
        return r == self.sched.rounds - 1 or (self.stopped is not None and r == self.stopped["round"])

    def rounds_trained(self) -> int:
        return self.sched.rounds if self.stopped is None else int(self.stopped["round"]) + 1

    def end_step(self, r: int) -> int:
        """The global step after round ``r`` (the last round may be short)."""
        return min((r + 1) * self.cfg.algo.local_iters, self.sched.total_steps)

    def checkpoint_due(self, r: int) -> bool:
        every = self.cfg.run.checkpoint_every or self.cfg.run.eval_every
        return bool(self.out) and self.algo.checkpointable and ((r + 1) % every == 0 or self.is_last(r))

    def last_good(self) -> str:
        """The end of an error message: the checkpoint to go back to, if any."""
        last = checkpoint.latest(self.out) if self.out else None
        return f" (last good checkpoint: {last})" if last else ""


@dataclass
class LocalWork:
    """Each rank's local steps of a round, gathered (one entry per rank)."""

    loss: torch.Tensor
    compute_s: torch.Tensor
    steps: torch.Tensor
    """Local steps taken (fewer than ``local_iters`` on a slow worker of a speed-balanced plan)."""


@dataclass
class Synchronized:
    """Each rank's synchronization of a round, gathered (one entry per rank)."""

    comm_s: torch.Tensor
    sent_bytes: torch.Tensor
    """Training traffic sent so far (cumulative)."""
    recv_bytes: torch.Tensor
    messages: torch.Tensor
    """This round's messages."""
    finite: torch.Tensor
    """Whether everything the rank holds is finite after the round."""


@dataclass
class Totals:
    """Each rank's byte counters and memory at the end of a run, gathered (one entry per rank)."""

    sync_sent: torch.Tensor
    sync_received: torch.Tensor
    eval_sent: torch.Tensor
    eval_received: torch.Tensor
    state_bytes: torch.Tensor
    peak_memory: torch.Tensor
    checkpoint_sent: torch.Tensor
    checkpoint_received: torch.Tensor


def gather(comm: Communicator, kind, *mine: float):
    """Collective: this rank's values of ``kind``'s fields, in order, gathered as one float64 row per
    rank; returns a ``kind`` whose every field holds its values over the ranks."""
    with comm.tag("control"):
        table = torch.stack(comm.all_gather(torch.tensor(mine, dtype=torch.float64)))
    return kind(*table.T)


def ints(values: torch.Tensor) -> list[int]:
    return [int(v) for v in values]


def floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values]


@dataclass
class RoundRecord:
    """One round's row of metrics.jsonl, its keys in this order; an evaluated round adds the task's
    fields (:attr:`resist.tasks.Task.record`)."""

    round: int
    step: int
    epoch: float
    lr: float
    loss: float
    """Mean over the ranks of each rank's mean training loss."""
    compute_s: float
    """The slowest rank's local steps: the round's parallel compute time."""
    comm_s: float
    time_s: float
    """Parallel training time so far: compute plus communication of every round."""
    elapsed_s: float
    sent_bytes: list[int]
    recv_bytes: list[int]
    messages: int
    """This round's, of the worker that sent the most."""
    compute_s_per_worker: list[float]
    steps_per_worker: list[int]
    blocks_per_worker: list[int] | None
    """Partitioned blocks each worker held (absent from the row where no plan deals them)."""
    evaluation: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        plain = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name != "evaluation" and not (f.name == "blocks_per_worker" and self.blocks_per_worker is None)}
        return {**plain, **self.evaluation}


def run_worker(comm: Communicator, cfg: Config, dataset: DataSource, out: Path | None,
               resume: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """One rank's whole training run (paper Algorithm 1); returns the run summary (the same on every rank).

    ``resume``: a checkpoint (or its path) to continue from, exactly where it was written.
    """
    if isinstance(resume, str):
        resume = checkpoint.load(Path(resume))
    w = prepare_worker(comm, cfg, dataset, out)
    restore(w, resume, dataset.n_train)
    open_metrics(w)
    for r in range(w.first_round, w.sched.rounds):
        messages_before = comm.bytes.messages["sync"]
        local = gather(comm, LocalWork, *train_round(w, r))
        if not local.loss.isfinite().all():
            bad = int((~local.loss.isfinite()).nonzero()[0])
            raise TrainingError(f"loss became {local.loss[bad].item()} on rank {bad} in round {r}; lower --lr or "
                                f"check the data" + w.last_good())
        # Before the sync, which delivers what it learned to the next round's plan.
        w.algo.observe(r, floats(local.compute_s), ints(local.steps))
        synced = synchronize(w, r, messages_before)
        w.progress["parallel_s"] += float(local.compute_s.max() + synced.comm_s.max())
        scores = evaluate(w, r)
        record(w, r, local, synced, scores)
        w.stopped = reached_target(w, r, scores)
        if w.checkpoint_due(r):
            w.progress["elapsed_s"] = time.perf_counter() - w.started
            save_checkpoint(comm, w.algo, cfg, w.out, r + 1, w.end_step(r) / w.sched.steps_per_epoch, w.progress,
                            w.rows)
        if w.stopped:
            break
    if w.writer:
        w.writer.close()
    w.stream.close()  # image folders: stop the loader processes now, not at garbage collection
    w.plain.close()
    if out:
        w.algo.save_final(out)
    return summarize(w, dataset)


def prepare_worker(comm: Communicator, cfg: Config, dataset: DataSource, out: Path | None) -> Worker:
    """This rank's algorithm, data streams, task and evaluator; collective where the dataset has class
    folders (every rank must see the same ones)."""
    device = resolve_device(cfg.run.device)
    sched = Schedule.of(cfg, dataset.n_train)
    algo = build_algorithm(comm, cfg, num_classes_of(cfg, dataset), device, sched.steps_per_epoch)
    faults = from_env()
    d = cfg.data
    if dataset.classes is not None:
        same_data_everywhere(comm, dataset)
    bad = BadImages(skip=d.skip_bad_images)
    loading = {"device": device, "loader_workers": loader_workers(cfg), "bad": bad}
    stream = dataset.train_stream(comm.world_size, comm.rank, d.batch_size, cfg.run.seed, augment=d.augment, **loading)
    plain = dataset.train_stream(comm.world_size, comm.rank, d.batch_size, cfg.run.seed + 1, augment=False, **loading)
    sets = dataset.eval_sets(d.eval_batch_size, d.eval_limit, **loading)
    if cfg.algo.balance != "none":  # the cost model a speed is measured in: forward FLOPs of the parts
        algo.set_costs(*step_costs(model_builder(cfg, num_classes_of(cfg, dataset)), stream.batch(0)[0],
                                   algo.store.candidates))
    recal = lambda: (plain.batch(k) for k in range(cfg.algo.recalib_batches))  # noqa: E731
    task = make_task(d.task, algo.store.model)  # detection's loss takes the model's anchors
    layout = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    return Worker(comm, cfg, out, sched, algo, task, device, stream, plain,
                  task.evaluator(sets, recal, cfg.algo.bn_eval, device), bad, faults,
                  Precision(cfg.run.amp, device), layout,
                  {"parallel_s": 0.0, "elapsed_s": 0.0, "best": task.worst, "best_time": 0.0})


def restore(w: Worker, resume: dict[str, Any] | None, n_train: int) -> None:
    """Materialize what this rank holds: fresh, or from a checkpoint with its progress, metrics and (with
    the same worker count) each rank's own state and byte counters (exact resume)."""
    comm = w.comm
    if resume is None:
        w.algo.start(0)
        return
    w.point = resume_point_in(resume, w.cfg, w.sched, n_train)
    w.first_round = w.point.round
    if comm.rank == 0 and w.point.note:
        log.info("%s", w.point.note)
    w.algo.replay(resume["metrics"])
    w.algo.start(w.first_round, resume["model"])
    if len(resume.get("rank_state", [])) == comm.world_size:  # with another worker count they restart
        w.algo.load_rank_state({k: v.to(w.device) for k, v in resume["rank_state"][comm.rank].items()})
    w.progress.update(resume["progress"])
    w.rows = list(resume["metrics"])
    if len(resume["bytes"]) == comm.world_size:  # same workers: the byte counts continue exactly
        for tag, (sent, received) in resume["bytes"][comm.rank].items():
            comm.bytes.sent[tag], comm.bytes.received[tag] = sent, received


def open_metrics(w: Worker) -> None:
    """Rank 0 rewrites metrics.jsonl with the rows so far (a resumed run drops rows past its checkpoint);
    the clock continues from the checkpoint's."""
    if w.comm.rank == 0 and w.out:
        (w.out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in w.rows))
        w.writer = MetricsWriter(w.out / "metrics.jsonl", progress_total=max(0, w.sched.rounds - w.first_round),
                                 loggers=w.cfg.run.loggers, first_round=w.first_round)
    w.started = time.perf_counter() - w.progress["elapsed_s"]


def train_round(w: Worker, r: int) -> tuple[float, float, int]:
    """Round ``r``'s local SGD steps on the sub-network this rank holds (Algorithm 1, §2.3): ``local_iters``
    unless the algorithm's plan gives this rank fewer; returns their mean loss, the compute time (waiting
    for peers excluded) and how many steps were taken."""
    comm, cfg, store = w.comm, w.cfg, w.algo.store
    first = r * cfg.algo.local_iters
    steps = range(first, min(first + (w.algo.local_steps(r) or cfg.algo.local_iters), w.sched.total_steps))
    w.algo.round_length(r, len(steps), w.is_last(r))
    w.algo.begin_round(r)
    # The held parameters change from round to round, so the optimizer is rebuilt (a momentum
    # restart, §2.6); momentum that persists lives in the part store and survives it.
    opt = make_optimizer(store, cfg.optim)
    w.precision.new_round()
    t0, idle0 = time.perf_counter(), comm.idle_s
    losses = []
    for step in steps:
        poisoned = fire(w.faults, comm.rank, r, step) if w.faults else False
        slow, t_step = slowdown(w.faults, comm.rank, r, step) if w.faults else 1.0, time.perf_counter()
        x, y = w.stream.batch(step)
        loss = train_step(store.model, opt, w.task.inputs(x, w.device, w.layout), y.to(w.device, non_blocking=True),
                          lr_at(cfg.optim, step, w.sched.total_steps), w.algo.after_backward, w.precision, w.task.loss)
        losses.append(loss * float("nan") if poisoned else loss)
        if slow > 1:  # RESIST_FAULTS slow: this step takes as long as on a machine 1/slow as fast
            time.sleep((slow - 1) * (time.perf_counter() - t_step))
        w.algo.after_step(r, step - first)
        joined = w.algo.joined()  # the sub-network grew (ResIST's overlap: blocks arrived at step tau)
        if w.algo.restarts():  # over everything held now, the arrivals included
            opt = make_optimizer(store, cfg.optim)
        elif joined:
            add_parameters(opt, store, joined, cfg.optim)
    loss = torch.stack(losses).mean().item()
    compute_s = time.perf_counter() - t0 - (comm.idle_s - idle0)
    w.state_bytes = max(w.state_bytes, store.memory_bytes(opt))
    comm.barrier()  # so that the sync time that follows is communication, not waiting for a slow peer
    return loss, compute_s, len(steps)


def synchronize(w: Worker, r: int, messages_before: int) -> Synchronized:
    """Average every part over the ranks that held it, sent straight to the next round's holders (§2.5,
    Fig. 3); refuses a model that became non-finite on any rank, before anything of the round is written."""
    comm = w.comm
    t1, idle1 = time.perf_counter(), comm.idle_s
    w.algo.end_round(r, final=w.is_last(r))
    comm_s = time.perf_counter() - t1 - (comm.idle_s - idle1)
    synced = gather(comm, Synchronized, comm_s, comm.bytes.sent["sync"], comm.bytes.received["sync"],
                    comm.bytes.messages["sync"] - messages_before, held_state_is_finite(w.algo.store))
    if not synced.finite.all():  # the last steps' update overflowed though their loss was finite
        bad = int((synced.finite == 0).nonzero()[0])
        raise TrainingError(f"the model became non-finite in round {r} on rank {bad}, so nothing of that round "
                            f"was written; lower --lr or check the data" + w.last_good())
    return synced


def evaluate(w: Worker, r: int) -> dict[str, float] | None:
    """The whole network's scores, its partitioned branches scaled by c (§2.4), every ``eval_every`` rounds
    and after the last; None between. Keeps the best headline score and when it was reached."""
    if (r + 1) % w.cfg.run.eval_every != 0 and not w.is_last(r):
        return None
    scores = w.algo.evaluate(w.evaluator)
    score = scores[w.task.headline]
    if not math.isfinite(score):  # every rank has the broadcast scores, so every rank stops here
        raise TrainingError(f"{w.task.headline} became {score} at the evaluation after round {r}: the model "
                            f"diverged; lower --lr or warm it up (--lr-warmup-epochs)" + w.last_good())
    if w.task.better(score, w.progress["best"]):
        w.progress["best"], w.progress["best_time"] = score, w.progress["parallel_s"]
    return scores


def reached_target(w: Worker, r: int, scores: dict[str, float] | None) -> dict[str, float] | None:
    """``--stop-at``: round ``r``'s evaluation is at least as good as the target (every rank has the same
    broadcast scores, so every rank stops at the same round)."""
    target = w.cfg.run.stop_at
    if target is None or scores is None or w.task.better(target, scores[w.task.headline]):
        return None
    if w.writer:
        log.info("%s %.4g reached --stop-at %g after round %d: stopping", w.task.headline,
                 scores[w.task.headline], target, r)
    return {"round": r, "target": target, "score": scores[w.task.headline]}


def record(w: Worker, r: int, local: LocalWork, synced: Synchronized, scores: dict[str, float] | None) -> None:
    """Round ``r``'s row: kept for checkpoints and the summary, and appended to metrics.jsonl by rank 0."""
    step = w.end_step(r)
    evaluation = w.task.record(scores, w.progress["best"]) if scores is not None else {}
    row = RoundRecord(r, step, step / w.sched.steps_per_epoch, lr_at(w.cfg.optim, step - 1, w.sched.total_steps),
                      float(local.loss.mean()), float(local.compute_s.max()), float(synced.comm_s.max()),
                      w.progress["parallel_s"], time.perf_counter() - w.started, ints(synced.sent_bytes),
                      ints(synced.recv_bytes), int(synced.messages.max()), floats(local.compute_s), ints(local.steps),
                      w.algo.depths(r), evaluation).row()
    w.rows.append(row)
    if w.writer:
        w.writer.write(row, w.task.describe(row) if scores is not None else None)


def summarize(w: Worker, dataset: DataSource) -> dict[str, Any]:
    """Collective: the run summary (summary.json), with every rank's byte counters and memory."""
    comm, cfg, sched, point = w.comm, w.cfg, w.sched, w.point
    totals = gather(comm, Totals, comm.bytes.sent["sync"], comm.bytes.received["sync"], comm.bytes.sent["eval"],
                    comm.bytes.received["eval"], w.state_bytes, peak_memory_bytes(w.device),
                    comm.bytes.sent["checkpoint"], comm.bytes.received["checkpoint"])
    steps = min(w.rounds_trained() * cfg.algo.local_iters, sched.total_steps)
    end_epoch = steps / sched.steps_per_epoch
    return {
        "algo": cfg.algo.name, "model": cfg.model.name, "width": cfg.model.width, "workers": comm.world_size,
        "dataset": dataset.name, "runtime": cfg.run.runtime, "rounds": w.rounds_trained(),
        "stopped_at_target": w.stopped,
        "steps": steps, "resumed_at_round": w.first_round,
        # Epochs each worker's shard was trained for, before and after the last resume (the worker
        # count may differ between them); their sum is what the whole run trained.
        "epochs_trained": (point.epochs_before if point else 0.0) + end_epoch - (point.epoch if point else 0.0),
        "resume": None if point is None else {
            "workers_before": point.workers_before, "epochs_before": point.epochs_before,
            "resumed_at_epoch": point.epoch, "epochs_after": end_epoch - point.epoch},
        **w.task.summary(w.rows),
        **({"skipped_images": skipped_images(comm, w.bad, dataset)} if cfg.data.skip_bad_images else {}),
        "time_s": w.progress["parallel_s"], "time_to_best_s": w.progress["best_time"],
        "elapsed_s": time.perf_counter() - w.started,
        "sent_bytes_per_worker": ints(totals.sync_sent), "recv_bytes_per_worker": ints(totals.sync_received),
        # Assembling the global model on rank 0 is not training traffic: reported apart, never in the above.
        "eval_bytes_sent_per_worker": ints(totals.eval_sent), "eval_bytes_recv_per_worker": ints(totals.eval_received),
        "checkpoint_bytes_sent_per_worker": ints(totals.checkpoint_sent),
        "checkpoint_bytes_recv_per_worker": ints(totals.checkpoint_received),
        "model_state_bytes_per_worker": ints(totals.state_bytes),
        "peak_memory_bytes_per_worker": ints(totals.peak_memory),
        "peak_memory_kind": "cuda max allocated" if w.device.type == "cuda" else "process max RSS",
        "eval_scale": w.algo.eval_scale(), "scaled_blocks": list(w.algo.store.candidates),
    }


def loader_workers(cfg: Config) -> int:
    """``data.loader_workers``, or for ``None`` this machine's share: the cores this process may run on
    (what DataLoader counts when it warns of too many processes) over the ranks on this machine, at most 4."""
    if cfg.data.loader_workers is not None:
        return cfg.data.loader_workers
    here = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.algo.workers)) if under_torchrun() else cfg.algo.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores // max(1, here))


def held_state_is_finite(store) -> bool:
    """Whether every float tensor this rank holds (weights, BatchNorm statistics, momenta) is finite."""
    flags = [t.isfinite().all() for part in store.all_parts() if store.held(part)
             for t in store.state_tensors(part) if t.is_floating_point() and not t.is_meta]
    return bool(torch.stack(flags).all()) if flags else True


def same_data_everywhere(comm: Communicator, dataset: DataSource) -> None:
    """Collective: under torchrun every node scans its own copy of an image folder; a copy with other
    classes (or other files) would give the same output index another meaning on that node, silently."""
    text = "\n".join([*dataset.classes, str(dataset.n_train), str(len(dataset.test))])
    mine = torch.tensor([int(hashlib.sha1(os.fsencode(text)).hexdigest()[:15], 16)], dtype=torch.int64)
    with comm.tag("control"):
        everyone = [int(t) for t in comm.all_gather(mine)]
    other = next((r for r, v in enumerate(everyone) if v != everyone[0]), None)
    if other is not None:
        raise DatasetError(f"rank {other} sees another image folder than rank 0 ({dataset.source} on rank "
                           f"{comm.rank}): other classes or another number of images; give every node the same tree")


def skipped_images(comm: Communicator, bad: BadImages, dataset) -> dict[str, Any]:
    """Collective: the unreadable images any rank skipped, per split (train, test, extra test sets),
    counted once each however often they were drawn, with their paths (the first 100)."""
    splits = ["train", "test", *getattr(dataset, "extra", {})]
    counts, files = {}, []
    with comm.tag("control"):
        for split in splits:
            mine = torch.tensor(sorted(bad.seen.get(split, {})), dtype=torch.int64)
            sizes = comm.all_gather(torch.tensor([len(mine)], dtype=torch.int64))
            longest = int(max(sizes).item())
            padded = torch.full((longest,), -1, dtype=torch.int64)
            padded[:len(mine)] = mine
            union = sorted({int(i) for t in comm.all_gather(padded) for i in t.tolist() if i >= 0}) if longest else []
            counts[split] = len(union)
            table = dataset.train if split == "train" else dataset.test if split == "test" else dataset.extra[split]
            files += [table.path(i) for i in union]
    return {**counts, "files": files[:100]}


def save_checkpoint(comm: Communicator, algo, cfg: Config, out: Path, next_round: int, epoch: float,
                    progress: dict[str, float], rows: list[dict[str, Any]]) -> None:
    """Collective: the global state gathered on rank 0 and written there, atomically."""
    state = algo.gather_state(tag="checkpoint")
    with comm.tag("checkpoint"):  # what each rank alone holds (error-feedback residuals), for rank 0 to write
        mine = algo.rank_state()
        everyone = {k: comm.all_gather(mine[k].contiguous()) for k in sorted(mine)}
    with comm.tag("control"):
        counters = comm.all_gather(torch.tensor(
            [[comm.bytes.sent[t], comm.bytes.received[t]] for t in ("sync", "eval", "checkpoint")], dtype=torch.float64))
    if state is not None:
        per_rank = [{t: (int(c[i, 0]), int(c[i, 1])) for i, t in enumerate(("sync", "eval", "checkpoint"))} for c in counters]
        checkpoint.save(out, {"round": next_round, "epoch": epoch, "config": cfg.to_dict(), "model": state,
                              "progress": dict(progress), "metrics": rows, "bytes": per_rank,
                              "rank_state": [{k: v[r].cpu() for k, v in everyone.items()} for r in range(comm.world_size)]},
                        keep=cfg.run.keep_checkpoints)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this worker: CUDA allocations on a GPU, else the process's max resident set
    (on the in-process runtime all workers share one process, so it is the whole simulation's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dist_entry(comm: Communicator, cfg_dict: dict, out: str | None, dataset: DataSource | None,
                resume: str | None) -> dict[str, Any]:
    cfg = Config.from_dict(cfg_dict)
    if comm.rank == 0 and not log.handlers:  # a process spawned by --runtime dist: rank 0 reports progress
        setup_logging()
    if dataset is None:
        dataset = load_data(cfg)
    if out:
        resume = agree_on_resume(comm, Path(out), resume)
    return run_worker(comm, cfg, dataset, Path(out) if out else None, resume)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def train(cfg: Config, dataset: DataSource | None = None, resume: bool | str = False,
          force: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary, also written to ``RUN/summary.json``.

    ``resume``: continue from the latest checkpoint in ``cfg.run.out`` (an error if there is none);
    ``"auto"``: continue if there is one (under torchrun, if rank 0 sees one), else start afresh.
    ``force``: a fresh run replaces the run already in ``cfg.run.out`` (its files only; see
    :mod:`resist.rundir`). The run folder is locked for as long as the run goes on.
    """
    check_loggers(cfg.run.loggers)  # before any folder or process exists
    owned: list[rundir.RunLock] = []
    try:
        return _train(cfg, dataset, resume, force, owned)
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        out = Path(cfg.run.out)
        said = str(e) if isinstance(e, NoSpaceError) else f"no space left on the device at {e.filename or out}"
        last = checkpoint.latest(out)
        # Resuming in place would only fill the disk again: space first, or another disk.
        raise NoSpaceError(e.errno, f"{said}; free space there, or copy {out} to a disk with room, before resuming "
                                    f"it (resist train --resume FOLDER" + (f", from {last.name})" if last else ")")) from None
    finally:
        for held in owned:
            rundir.remove_partial_files(held.folder)  # a rank killed mid-write leaves its temporary file
            held.release()


def _train(cfg: Config, dataset: DataSource | None, resume: bool | str, force: bool,
           owned: list[rundir.RunLock]) -> dict[str, Any]:
    if cfg.run.runtime != "dist" or not under_torchrun() or os.environ.get("RANK") == "0":
        # The folder is looked at before any data is read, so that a refusal comes at once.
        if resume is False:
            rundir.check_fresh(cfg.run.out, force)
        else:
            rundir.check_out(cfg.run.out)
    given = dataset is not None
    if dataset is None:
        dataset = load_data(cfg, download=cfg.data.download)
    check(cfg, dataset)
    if resume is True and cfg.run.runtime == "elastic":
        raise ValueError("an elastic run writes no checkpoint (it goes on through lost workers instead); "
                         "start it afresh")
    if resume is True and not algorithm_class(cfg.algo.name).checkpointable:
        raise ValueError(f"{cfg.algo.name} runs write no checkpoints, so they cannot be resumed")
    torchrun = cfg.run.runtime == "dist" and under_torchrun()
    if torchrun and int(os.environ["WORLD_SIZE"]) != cfg.algo.workers:
        raise ValueError(f"torchrun started {os.environ['WORLD_SIZE']} processes but --workers is "
                         f"{cfg.algo.workers}; make them equal")
    if cfg.run.runtime == "elastic" and cfg.run.lighthouse is not None:
        from ..comm.membership import check_lighthouse

        check_lighthouse(cfg.run.lighthouse)  # before the run folder is written
    lead = not torchrun or int(os.environ["RANK"]) == 0
    if lead:
        owned.append(claim_run_folder(cfg, resume, force))
    if resume == "auto":  # resume if there is a checkpoint; under torchrun rank 0 decides for all
        resume = lead and checkpoint.latest(Path(cfg.run.out)) is not None
    ckpt = resume_point(cfg, Path(cfg.run.out), dataset) if resume and lead else None
    done = finished_summary(cfg, Path(cfg.run.out), ckpt, dataset) if ckpt else None
    if done is not None:
        if torchrun:  # the other ranks wait for this one: fail, and torchrun stops them
            raise ValueError(f"{cfg.run.out} is finished; nothing to resume")
        return done
    out = Path(cfg.run.out)
    if lead:
        out = prepare_run_dir(cfg, resuming=ckpt is not None, classes=dataset.classes)
        for name, content in make_task(cfg.data.task).run_files(dataset).items():
            atomic_write_json(content, out / name)
        log.info("%s: %s on %d workers (%s), %s, run folder %s%s", cfg.algo.name, cfg.model.name,
                 cfg.algo.workers, cfg.run.runtime, dataset.source, out,
                 f", resuming from {ckpt.name}" if ckpt else "")
    summary = launch(cfg, dataset, given, out, ckpt, torchrun)
    summary["dataset_source"] = dataset.source
    if lead:
        atomic_write_json(summary, out / "summary.json")
    return summary


def launch(cfg: Config, dataset: DataSource, given: bool, out: Path, ckpt: Path | None,
           torchrun: bool) -> dict[str, Any]:
    """Run every rank on the configured runtime and return rank 0's summary; a failed peer's error
    says how to resume. ``given``: the caller passed ``dataset`` in (else it was loaded from disk)."""
    if cfg.run.runtime == "elastic":
        return launch_elastic_run(cfg, dataset, given, out)
    try:
        if cfg.run.runtime == "inprocess":
            state = checkpoint.load(ckpt) if ckpt else None
            return run_in_process(cfg.algo.workers, lambda comm: run_worker(comm, cfg, dataset, out, state),
                                  timeout=cfg.run.timeout)[0]
        from ..comm import run_from_env, spawn

        # A caller's in-memory dataset (tests, small data) travels to the children; otherwise each
        # process loads its own copy from disk rather than receiving it through a pipe.
        args = (cfg.to_dict(), str(out), dataset if given else None, str(ckpt) if ckpt else None)
        if torchrun:
            return run_from_env(_dist_entry, args=args, backend=cfg.run.backend, timeout=cfg.run.timeout)
        return spawn(cfg.algo.workers, _dist_entry, args=args, backend=cfg.run.backend,
                     timeout=cfg.run.timeout, master_port=cfg.run.master_port)[0]
    except CommError as e:
        if getattr(e, "usage", False):  # a rank found bad input (an unreadable image): exit 2, as in-process
            raise ValueError(str(e)) from None
        if (getattr(e, "os_error", None) or (0,))[0] in NO_SPACE:  # as in-process: see train()
            raise NoSpaceError(e.os_error[0], e.os_error[1]) from None
        last = checkpoint.latest(out)
        hint = (f"resume with: resist train --resume {out} (latest checkpoint {last.name})" if last
                else "no checkpoint was written yet")
        raise CommError(f"{e}; {hint}") from None


def launch_elastic_run(cfg: Config, dataset: DataSource, given: bool, out: Path) -> dict[str, Any]:
    """``--runtime elastic``: this process is one worker of a shared lighthouse (``--lighthouse``), or
    the supervisor of a local lighthouse and ``--workers`` worker processes."""
    if cfg.run.lighthouse is not None:
        from ..comm.membership import TorchftMembership
        from .elastic import run_elastic_worker

        summary = run_elastic_worker(TorchftMembership(cfg.run.lighthouse, cfg.run.worker_id), cfg, dataset, out)
        if summary is None:  # another worker wrote the run's summary: this one says what it did
            summary = {"algo": cfg.algo.name, "runtime": "elastic", "worker_id": cfg.run.worker_id,
                       "summary_written_by": "the lowest-named worker of the last quorum"}
        return summary
    from .elastic_launch import launch_elastic

    return launch_elastic(cfg, out, dataset if given else None)
