"""The training loop every algorithm shares: rounds of ``local_iters`` steps, synchronization,
periodic evaluation of the assembled global model, metrics (paper Algorithm 1, §2.3 and §5).

:func:`run_worker` is SPMD: every rank of either runtime runs it with its own communicator.
:func:`train` sets up the run folder and starts the ranks on the chosen runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..algorithms import Algorithm
from ..comm import Communicator, run_in_process
from ..comm import CommError
from ..comm.launch import check_backend, check_port
from ..config import RESUMABLE_CHANGES, Config, differences
from ..data import BadImages, Dataset, DatasetError, FolderDataset, load_dataset, steps_per_epoch
from .. import rundir
from ..io import NO_SPACE, NoSpaceError, atomic_write_json, atomic_write_text, printable
from ..models import create_model
from ..models.protocol import step_costs
from ..plan import candidate_blocks, check_dealing, validate, whole_network_rounds
from ..registry import DETECTION_DATASETS, FOLDER_DATASETS, TEXT_DATASETS, algorithm_class
from ..faults import fire, from_env, slowdown
from . import checkpoint
from .metrics import MetricsWriter, check_loggers
from ..tasks import make_task
from .optim import Precision, lr_at, make_optimizer, train_step

log = logging.getLogger("resist")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a failed peer); the message says what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def model_builder(cfg: Config, num_classes: int) -> Callable[[], torch.nn.Module]:
    """A factory for the architecture on the meta device: workers materialize only what they hold."""
    extra = {"layers": cfg.model.layers} if cfg.model.layers is not None else {}
    if cfg.model.stem is not None:
        extra["stem"] = cfg.model.stem
    if cfg.data.task == "lm":
        extra["context"] = cfg.data.context

    def build() -> torch.nn.Module:
        with torch.device("meta"):
            return create_model(cfg.model.name, num_classes=num_classes, width=cfg.model.width, **extra)

    return build


def build_algorithm(comm: Communicator, cfg: Config, num_classes: int, device: torch.device,
                    steps_per_epoch: int) -> Algorithm:
    """This rank's algorithm object, from the registry, given the parts of the config it needs."""
    a, cls = cfg.algo, algorithm_class(cfg.algo.name)
    phases = {}
    if cls.uses_warmup:  # only such an algorithm takes whole-network rounds
        warmup_rounds, cooldown_from = whole_network_rounds(cfg.optim.epochs, steps_per_epoch, a.local_iters,
                                                            a.warmup_epochs, a.cooldown_epochs)
        phases = {"warmup_rounds": warmup_rounds, "cooldown_from": cooldown_from}
    return cls(comm, model_builder(cfg, num_classes), device, a, cfg.run.seed, **phases)


@dataclass
class Schedule:
    """How many steps and rounds a run has (an epoch: ``optim.epoch_unit``)."""

    steps_per_epoch: int
    total_steps: int
    rounds: int

    @classmethod
    def of(cls, cfg: Config, n_train: int) -> "Schedule":
        spe = steps_per_epoch(n_train, cfg.algo.workers, cfg.data.batch_size)
        if cfg.optim.epoch_unit == "dataset":
            spe *= cfg.algo.workers
        total = max(1, math.ceil(cfg.optim.epochs * spe))
        rounds = math.ceil(total / cfg.algo.local_iters)
        if cfg.run.max_rounds is not None:
            rounds = min(rounds, cfg.run.max_rounds)
        return cls(spe, total, rounds)


def load_data(cfg: Config, download: bool = False) -> Dataset | FolderDataset:
    """The dataset ``cfg.data`` names (image folders: scanned, not decoded)."""
    d = cfg.data
    if d.dataset in FOLDER_DATASETS:
        return load_dataset(d.dataset, d.data_dir, crop_size=d.crop_size, extra_test=d.extra_tests)
    if d.dataset in TEXT_DATASETS:
        return load_dataset(d.dataset, d.data_dir, context=d.context, max_bytes=d.text_bytes)
    if d.dataset in DETECTION_DATASETS:
        from ..data.voc import parse_splits

        return load_dataset(d.dataset, d.data_dir, size=d.input_size, train_splits=parse_splits(d.voc_train),
                            test_splits=parse_splits(d.voc_test), flip=d.flip)
    return load_dataset(d.dataset, d.data_dir, download=download)


def num_classes_of(cfg: Config, dataset: Dataset) -> int:
    n = cfg.model.num_classes or dataset.num_classes
    if n < dataset.num_classes:
        raise ValueError(f"num_classes {n} is below the dataset's {dataset.num_classes} classes")
    return n


def check(cfg: Config, dataset: Dataset) -> Schedule:
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
    return Schedule.of(cfg, dataset.n_train)


@dataclass
class ResumePoint:
    """Where a checkpoint's run continues in this run's schedule (see :func:`resume_point_in`)."""

    round: int
    """The first round to train."""
    epochs_before: float
    """Epochs each worker's shard had been trained for when the checkpoint was written."""
    epoch: float
    """The epoch at which ``round`` begins in this schedule (equal to ``epochs_before`` when exact)."""
    workers_before: int
    note: str | None = None
    """One line for the log when the worker count changed."""


def resume_point_in(saved: dict[str, Any], cfg: Config, sched: Schedule, n_train: int) -> ResumePoint:
    """Map a checkpoint's progress onto this run's schedule.

    With the same worker count the run continues at the checkpoint's round. With another, steps per
    epoch change (each worker's shard is n / S), so progress carries over by epochs seen: the run
    continues at the round boundary nearest to that epoch (at most half a round off), and the schedule
    of learning-rate decays, being in fractions of the epochs, stays at the same epochs.
    """
    old = Config.from_dict(saved["config"])
    old_sched = Schedule.of(old.replace(**{"run.max_rounds": None}), n_train)
    done = saved.get("epoch")
    if done is None:  # checkpoints written before the epoch was recorded
        done = min(saved["round"] * old.algo.local_iters, old_sched.total_steps) / old_sched.steps_per_epoch
    if old.algo.workers == cfg.algo.workers:
        return ResumePoint(saved["round"], done, done, old.algo.workers)
    iters, spe = cfg.algo.local_iters, sched.steps_per_epoch
    full_rounds = math.ceil(sched.total_steps / iters)
    r = min(full_rounds, max(0, round(done * spe / iters)))
    at = min(r * iters, sched.total_steps) / spe
    note = (f"resuming with {cfg.algo.workers} workers instead of {old.algo.workers}: {done:.4g} of "
            f"{cfg.optim.epochs:g} epochs were trained; continuing at round {r} of {full_rounds}, epoch {at:.4g}")
    if abs(at - done) > 1e-9:
        note += (f" (a round boundary of the new schedule, so {abs(at - done):.3g} epochs are "
                 f"{'skipped' if at > done else 'trained twice'})")
    return ResumePoint(r, done, at, old.algo.workers, note)


def run_worker(comm: Communicator, cfg: Config, dataset: Dataset, out: Path | None,
               resume: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """One rank's whole training run; returns the run summary (the same on every rank).

    ``resume``: a checkpoint (or its path) to continue from, exactly where it was written.
    """
    device = resolve_device(cfg.run.device)
    sched = Schedule.of(cfg, dataset.n_train)
    algo = build_algorithm(comm, cfg, num_classes_of(cfg, dataset), device, sched.steps_per_epoch)
    store = algo.store
    if isinstance(resume, str):
        resume = checkpoint.load(Path(resume))
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
                                   store.candidates))
    recal = lambda: (plain.batch(k) for k in range(cfg.algo.recalib_batches))  # noqa: E731
    task = make_task(cfg.data.task, store.model)  # detection's loss takes the model's anchors
    evaluator = task.evaluator(sets, recal, cfg.algo.bn_eval, device)
    precision = Precision(cfg.run.amp, device)
    layout = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    lead = comm.rank == 0
    ckpt_every = cfg.run.checkpoint_every or cfg.run.eval_every
    progress = {"parallel_s": 0.0, "elapsed_s": 0.0, "best": task.worst, "best_time": 0.0}
    rows: list[dict[str, Any]] = []
    first_round = 0
    point = None
    if resume is None:
        algo.start(0)
    else:
        point = resume_point_in(resume, cfg, sched, dataset.n_train)
        first_round = point.round
        if lead and point.note:
            log.info("%s", point.note)
        algo.replay(resume["metrics"])
        algo.start(first_round, resume["model"])
        if len(resume.get("rank_state", [])) == comm.world_size:  # with another worker count they restart
            algo.load_rank_state({k: v.to(device) for k, v in resume["rank_state"][comm.rank].items()})
        progress.update(resume["progress"])
        rows = list(resume["metrics"])
        if len(resume["bytes"]) == comm.world_size:  # same workers: the byte counts continue exactly
            for tag, (sent, received) in resume["bytes"][comm.rank].items():
                comm.bytes.sent[tag], comm.bytes.received[tag] = sent, received
    writer = None
    if lead and out:
        (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        writer = MetricsWriter(out / "metrics.jsonl", progress_total=max(0, sched.rounds - first_round),
                               loggers=cfg.run.loggers, first_round=first_round)

    start = time.perf_counter() - progress["elapsed_s"]
    acc = None
    state_bytes = 0
    for r in range(first_round, sched.rounds):
        messages0 = comm.bytes.messages["sync"]
        algo.begin_round(r)
        # The held parameters change from round to round, so the optimizer is rebuilt (a momentum
        # restart, §2.6); momentum that persists lives in the part store and survives it.
        opt = make_optimizer(store, cfg.optim)
        precision.new_round()
        t0, idle0 = time.perf_counter(), comm.idle_s
        losses = []
        first = r * cfg.algo.local_iters
        steps = range(first, min(first + (algo.local_steps(r) or cfg.algo.local_iters), sched.total_steps))
        for step in steps:
            poisoned = fire(faults, comm.rank, r, step) if faults else False
            slow, t_step = slowdown(faults, comm.rank, r, step) if faults else 1.0, time.perf_counter()
            x, y = stream.batch(step)
            x = x.to(device, non_blocking=True)
            if x.dim() == 4:  # images: the configured memory layout
                x = x.contiguous(memory_format=layout)
            loss = train_step(store.model, opt, x, y.to(device, non_blocking=True),
                              lr_at(cfg.optim, step, sched.total_steps), algo.after_backward, precision, task.loss)
            losses.append(loss * float("nan") if poisoned else loss)
            if slow > 1:  # RESIST_FAULTS slow: this step takes as long as on a machine 1/slow as fast
                time.sleep((slow - 1) * (time.perf_counter() - t_step))
        loss = torch.stack(losses).mean().item()
        compute_s = time.perf_counter() - t0 - (comm.idle_s - idle0)
        state_bytes = max(state_bytes, store.memory_bytes(opt))
        comm.barrier()  # so that the sync time below is communication, not waiting for a slow peer
        with comm.tag("control"):
            row = torch.tensor([loss, compute_s, len(steps)], dtype=torch.float64)
            table = torch.stack(comm.all_gather(row))  # (world, 3)
        if not torch.isfinite(table[:, 0]).all():
            bad = int((~torch.isfinite(table[:, 0])).nonzero()[0])
            last_ckpt = checkpoint.latest(out) if out else None
            raise TrainingError(f"loss became {table[bad, 0].item()} on rank {bad} in round {r}; lower --lr or "
                                f"check the data" + (f" (last good checkpoint: {last_ckpt})" if last_ckpt else ""))
        worker_s, worker_steps = [float(v) for v in table[:, 1]], [int(v) for v in table[:, 2]]
        algo.observe(r, worker_s, worker_steps)  # before the sync, which delivers to next round's plan
        t1, idle1 = time.perf_counter(), comm.idle_s
        last = r == sched.rounds - 1
        algo.end_round(r, final=last)
        comm_s = time.perf_counter() - t1 - (comm.idle_s - idle1)
        with comm.tag("control"):
            row = torch.tensor([comm_s, comm.bytes.sent["sync"], comm.bytes.received["sync"],
                                comm.bytes.messages["sync"] - messages0, held_state_is_finite(store)],
                               dtype=torch.float64)
            table = torch.cat([table, torch.stack(comm.all_gather(row))], dim=1)  # (world, 8)
        if not table[:, 7].all():  # the last steps' update overflowed though their loss was finite
            bad = int((table[:, 7] == 0).nonzero()[0])
            last_ckpt = checkpoint.latest(out) if out else None
            raise TrainingError(f"the model became non-finite in round {r} on rank {bad}, so nothing of that round "
                                f"was written; lower --lr or check the data"
                                + (f" (last good checkpoint: {last_ckpt})" if last_ckpt else ""))
        progress["parallel_s"] += float(table[:, 1].max() + table[:, 3].max())
        acc = None
        if (r + 1) % cfg.run.eval_every == 0 or last:
            scores = algo.evaluate(evaluator)
            acc = scores[task.headline]
            if not math.isfinite(acc):  # every rank has the broadcast scores, so every rank stops here
                last_ckpt = checkpoint.latest(out) if out else None
                raise TrainingError(f"{task.headline} became {acc} at the evaluation after round {r}: the model "
                                    f"diverged; lower --lr or warm it up (--lr-warmup-epochs)"
                                    + (f" (last good checkpoint: {last_ckpt})" if last_ckpt else ""))
            if task.better(acc, progress["best"]):
                progress["best"], progress["best_time"] = acc, progress["parallel_s"]
        step = min(first + cfg.algo.local_iters, sched.total_steps)
        record = {
            "round": r, "step": step, "epoch": step / sched.steps_per_epoch,
            "lr": lr_at(cfg.optim, step - 1, sched.total_steps), "loss": float(table[:, 0].mean()),
            "compute_s": float(table[:, 1].max()), "comm_s": float(table[:, 3].max()),
            "time_s": progress["parallel_s"], "elapsed_s": time.perf_counter() - start,
            "sent_bytes": [int(v) for v in table[:, 4]], "recv_bytes": [int(v) for v in table[:, 5]],
            "messages": int(table[:, 6].max()),  # this round's, of the worker that sent the most
            "compute_s_per_worker": worker_s, "steps_per_worker": worker_steps,
            **({"blocks_per_worker": depths} if (depths := algo.depths(r)) is not None else {}),
            **(task.record(scores, progress["best"]) if acc is not None else {}),
        }
        rows.append(record)
        if writer:
            writer.write(record, task.describe(record) if acc is not None else None)
        if out and algo.checkpointable and ((r + 1) % ckpt_every == 0 or last):
            progress["elapsed_s"] = time.perf_counter() - start
            save_checkpoint(comm, algo, cfg, out, r + 1, step / sched.steps_per_epoch, progress, rows)
    if writer:
        writer.close()
    stream.close()  # image folders: stop the loader processes now, not at garbage collection
    plain.close()
    if out:
        algo.save_final(out)
    with comm.tag("control"):
        totals = torch.stack(comm.all_gather(torch.tensor(
            [comm.bytes.sent["sync"], comm.bytes.received["sync"],
             comm.bytes.sent["eval"], comm.bytes.received["eval"], state_bytes, peak_memory_bytes(device),
             comm.bytes.sent["checkpoint"], comm.bytes.received["checkpoint"]],
            dtype=torch.float64)))
    end_epoch = min(sched.rounds * cfg.algo.local_iters, sched.total_steps) / sched.steps_per_epoch
    return {
        "algo": cfg.algo.name, "model": cfg.model.name, "width": cfg.model.width, "workers": comm.world_size,
        "dataset": dataset.name, "runtime": cfg.run.runtime, "rounds": sched.rounds,
        "steps": min(sched.rounds * cfg.algo.local_iters, sched.total_steps), "resumed_at_round": first_round,
        # Epochs each worker's shard was trained for, before and after the last resume (the worker
        # count may differ between them); their sum is what the whole run trained.
        "epochs_trained": (point.epochs_before if point else 0.0) + end_epoch - (point.epoch if point else 0.0),
        "resume": None if point is None else {
            "workers_before": point.workers_before, "epochs_before": point.epochs_before,
            "resumed_at_epoch": point.epoch, "epochs_after": end_epoch - point.epoch},
        **task.summary(rows),
        **({"skipped_images": skipped_images(comm, bad, dataset)} if d.skip_bad_images else {}),
        "time_s": progress["parallel_s"], "time_to_best_s": progress["best_time"],
        "elapsed_s": time.perf_counter() - start,
        "sent_bytes_per_worker": [int(v) for v in totals[:, 0]],
        "recv_bytes_per_worker": [int(v) for v in totals[:, 1]],
        # Assembling the global model on rank 0 is not training traffic: reported apart, never in the above.
        "eval_bytes_sent_per_worker": [int(v) for v in totals[:, 2]],
        "eval_bytes_recv_per_worker": [int(v) for v in totals[:, 3]],
        "checkpoint_bytes_sent_per_worker": [int(v) for v in totals[:, 6]],
        "checkpoint_bytes_recv_per_worker": [int(v) for v in totals[:, 7]],
        "model_state_bytes_per_worker": [int(v) for v in totals[:, 4]],
        "peak_memory_bytes_per_worker": [int(v) for v in totals[:, 5]],
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "eval_scale": algo.eval_scale(), "scaled_blocks": list(store.candidates),
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


def same_data_everywhere(comm: Communicator, dataset: FolderDataset) -> None:
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


def _dist_entry(comm: Communicator, cfg_dict: dict, out: str | None, dataset: Dataset | None,
                resume: str | None) -> dict[str, Any]:
    cfg = Config.from_dict(cfg_dict)
    if comm.rank == 0 and not log.handlers:  # a process spawned by --runtime dist: rank 0 reports progress
        setup_logging()
    if dataset is None:
        dataset = load_data(cfg)
    if out:
        resume = agree_on_resume(comm, Path(out), resume)
    return run_worker(comm, cfg, dataset, Path(out) if out else None, resume)


def agree_on_resume(comm: Communicator, out: Path, resume: str | None) -> str | None:
    """Collective: rank 0 alone decides whether and where the run resumes, and every rank follows.

    Under torchrun each process decides for itself before any communication exists, and a node that
    cannot see rank 0's run folder would start afresh beside ranks that resume. Rank 0's choice is
    broadcast as a round; every rank then reads that checkpoint, so the run folder must be on storage
    that every node reads (a rank that cannot read it fails, saying so)."""
    chosen = torch.tensor([-1], dtype=torch.int64)
    if comm.rank == 0 and resume:
        chosen[0] = checkpoint.round_of(Path(resume))
    with comm.tag("control"):
        comm.broadcast(chosen, 0)
    if chosen[0] < 0:
        return None
    path = checkpoint.path_for(out, int(chosen[0]))
    if not path.is_file():
        raise ValueError(f"rank {comm.rank} cannot read {path}, from which rank 0 resumes; put the run "
                         f"folder on storage that every node reads")
    return str(path)


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


CLASSES_FILE = "classes.json"


def prepare_run_dir(cfg: Config, resuming: bool, classes: tuple[str, ...] | None = None) -> Path:
    """Create the run folder with ``config.json`` and, for a dataset whose classes are folder names,
    ``classes.json`` (the class of each output index). A previous run's files are gone by now
    (:func:`resist.rundir.claim`), so a fresh run cannot be mistaken for the one that was here before."""
    out = Path(cfg.run.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.dumps() + "\n", out / "config.json")
        if classes is not None and not resuming:
            atomic_write_json(list(classes), out / CLASSES_FILE)
    except OSError as e:
        raise ValueError(f"cannot write the run folder {out}: {e.strerror or e}") from None
    return out


def check_classes(run_dir: Path, classes: tuple[str, ...] | None, where: str) -> None:
    """A resumed run must see the classes it was trained with, in the same order: the output index
    of each class is its position in the sorted folder names, so one folder added, removed or renamed
    shifts the meaning of every index after it."""
    if classes is None:
        return
    path = Path(run_dir) / CLASSES_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing, so the class of each output cannot be checked against "
                           f"{where}; restore it or start a new run folder") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is unreadable ({e}); restore it or start a new run folder") from None
    if list(saved) != list(classes):
        first = next((i for i, (a, b) in enumerate(zip(saved, classes)) if a != b), min(len(saved), len(classes)))
        theirs = repr(saved[first]) if first < len(saved) else "nothing"
        ours = repr(classes[first]) if first < len(classes) else "nothing"
        raise DatasetError(f"the classes of {where} ({len(classes)}) are not those this run was trained with "
                           f"({len(saved)}, {path}): class {first} was {theirs}, now {ours}")


def resume_point(cfg: Config, run_dir: Path, dataset: Dataset | FolderDataset | None = None) -> Path:
    """The checkpoint to continue ``run_dir`` from, after checking it belongs to ``cfg`` (and that the
    dataset has the classes the run was trained with)."""
    path = checkpoint.latest(run_dir)
    if path is None:
        raise ValueError(f"no checkpoint in {checkpoint.folder(run_dir)}; nothing to resume")
    saved_payload = checkpoint.load(path)
    saved = Config.from_dict(saved_payload["config"])
    changed = [k for k in differences(saved, cfg) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{path} belongs to another config ({', '.join(changed)} differ); "
                         f"resume with the run's own config or start a new run folder")
    if dataset is not None:
        check_classes(run_dir, dataset.classes, dataset.source)
        sched = Schedule.of(cfg, dataset.n_train)
        point = resume_point_in(saved_payload, cfg, sched, dataset.n_train)
        if point.round > sched.rounds:  # only a --max-rounds below the checkpoint's round gets here
            raise ValueError(f"{path} continues at round {point.round}, past the end of this run at round "
                             f"{sched.rounds} (--max-rounds {cfg.run.max_rounds}); to train further, resume with "
                             f"--max-rounds above {point.round}")
    return path


def finished_summary(cfg: Config, run_dir: Path, path: Path, dataset: Dataset) -> dict[str, Any] | None:
    """The summary of a finished run that resuming from ``path`` would not train further, else None.

    Such a run is left as it is: resuming it would only rewrite its config and summary (with the byte
    counters of a run that sent nothing, under another worker count perhaps)."""
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file():
        return None  # unfinished, or finished but cut off before its summary: resuming completes it
    saved = checkpoint.load(path)
    sched = Schedule.of(cfg, dataset.n_train)
    # Only a --max-rounds other than the run's own extends it: with another worker count alone the same
    # max_rounds would mean more epochs, which nobody asked for.
    extended = cfg.run.max_rounds != Config.from_dict(saved["config"]).run.max_rounds
    if extended and resume_point_in(saved, cfg, sched, dataset.n_train).round < sched.rounds:
        return None
    full = math.ceil(sched.total_steps / cfg.algo.local_iters)
    more = (f"resume with --max-rounds above {sched.rounds} to train it further" if sched.rounds < full else
            f"it trained all its {cfg.optim.epochs:g} epochs, and more epochs change the learning-rate schedule, "
            f"so they are a new run (--epochs, another --out)")
    log.info("%s is finished (round %d of %d): nothing to resume, so it is left as it is; %s", run_dir,
             sched.rounds, sched.rounds, more)
    try:
        return json.loads(summary.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{summary} is unreadable ({e}); the run is finished, its model is {run_dir / 'model.pt'}") from None


def train(cfg: Config, dataset: Dataset | None = None, resume: bool | str = False,
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


def _train(cfg: Config, dataset: Dataset | None, resume: bool | str, force: bool,
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
    if resume is True and not algorithm_class(cfg.algo.name).checkpointable:
        raise ValueError(f"{cfg.algo.name} runs write no checkpoints, so they cannot be resumed")
    torchrun = cfg.run.runtime == "dist" and under_torchrun()
    if torchrun and int(os.environ["WORLD_SIZE"]) != cfg.algo.workers:
        raise ValueError(f"torchrun started {os.environ['WORLD_SIZE']} processes but --workers is "
                         f"{cfg.algo.workers}; make them equal")
    lead = not torchrun or int(os.environ["RANK"]) == 0
    if lead:
        out = Path(cfg.run.out)
        fresh = resume is False or (resume == "auto" and checkpoint.latest(out) is None)
        # torchrun restarts an auto-resumed job in its own folder: a start that left neither a checkpoint
        # nor a summary is replaced, as it would be resumed had it written one.
        owned.append(rundir.claim(out, fresh=fresh, force=force or (
            resume == "auto" and fresh and not (out / "summary.json").exists())))
    if resume == "auto":  # resume if there is a checkpoint; under torchrun rank 0 decides for all
        resume = lead and checkpoint.latest(Path(cfg.run.out)) is not None
    ckpt = resume_point(cfg, Path(cfg.run.out), dataset) if resume and lead else None
    done = finished_summary(cfg, Path(cfg.run.out), ckpt, dataset) if ckpt else None
    if done is not None:
        if torchrun:  # the other ranks wait for this one: fail, and torchrun stops them
            raise ValueError(f"{cfg.run.out} is finished; nothing to resume")
        return done
    out = prepare_run_dir(cfg, resuming=ckpt is not None, classes=dataset.classes) if lead else Path(cfg.run.out)
    if lead and hasattr(dataset, "split_record"):  # text: which files went to train and test
        atomic_write_json(dataset.split_record(), out / "split.json")
    if lead:
        log.info("%s: %s on %d workers (%s), %s, run folder %s%s", cfg.algo.name, cfg.model.name,
                 cfg.algo.workers, cfg.run.runtime, dataset.source, out,
                 f", resuming from {ckpt.name}" if ckpt else "")
    try:
        if cfg.run.runtime == "inprocess":
            state = checkpoint.load(ckpt) if ckpt else None
            summary = run_in_process(cfg.algo.workers, lambda comm: run_worker(comm, cfg, dataset, out, state),
                                     timeout=cfg.run.timeout)[0]
        else:
            from ..comm import run_from_env, spawn

            # A caller's in-memory dataset (tests, small data) travels to the children; otherwise each
            # process loads its own copy from disk rather than receiving it through a pipe.
            args = (cfg.to_dict(), str(out), dataset if given else None, str(ckpt) if ckpt else None)
            if torchrun:
                summary = run_from_env(_dist_entry, args=args, backend=cfg.run.backend, timeout=cfg.run.timeout)
            else:
                summary = spawn(cfg.algo.workers, _dist_entry, args=args, backend=cfg.run.backend,
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
    summary["dataset_source"] = dataset.source
    if lead:
        atomic_write_json(summary, out / "summary.json")
    return summary


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))  # a file name that is not UTF-8 (a skipped image)


def setup_logging(verbose: bool = False) -> None:
    """One logger for the package; messages to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
