"""Elastic training: one worker's run through lost and joining workers, with no restart and no
checkpoint read (docs/elastic.md).

Membership changes only at round boundaries. After its local steps a worker asks the coordinator
(torchft's Lighthouse, or its in-process twin) for the next quorum, reporting what it trained
(:class:`~resist.algorithms.recovery.Report`); every member of the quorum then derives the same
decision (:func:`~resist.algorithms.recovery.decide`) and synchronizes the round over the new quorum
(:func:`resist.algorithms.elastic.synchronize`): a lost worker's blocks come back from their keepers,
a joiner receives its sub-network. A synchronization that a member's loss interrupts is redone over
the survivors from the state each had after its local steps. The data follow
:mod:`resist.data.elastic` (no example used twice or skipped within an epoch) and the learning rate
follows the epochs trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..algorithms import Algorithm
from ..algorithms.elastic import Snapshot, restore, synchronize
from ..algorithms.recovery import Decision, Refused, Report, Split, decide, reference_digest
from ..comm import CommError, Communicator
from ..config import Config
from ..data.elastic import DataCursor, ElasticBatches, commit, deal, examples_done, usable_positions
from ..faults import fire, from_env, slowdown
from ..io import atomic_write_json
from ..models.protocol import Part
from ..tasks import make_task
from .optim import Precision, lr_at, make_optimizer, train_step

log = logging.getLogger("resist")

#: Config fields that may differ between the workers of one elastic run (where each runs, not what it computes).
LOCAL_FIELDS = {"data": ("data_dir", "download", "loader_workers"),
                "run": ("out", "runtime", "lighthouse", "worker_id", "timeout", "device", "log", "master_port",
                        "backend", "min_workers")}


class WorkerLost(RuntimeError):
    """This (simulated) worker was killed: its thread ends here, as a killed process would."""


def config_digest(cfg: Config) -> str:
    """What every worker of a run must agree on: the config without where each worker runs."""
    d = cfg.to_dict()
    for section, names in LOCAL_FIELDS.items():
        for name in names:
            d[section].pop(name, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


@dataclass
class Trained:
    """This worker's round in progress: what it trained and how, until the round is synchronized."""

    round: int
    members: tuple[str, ...]
    cursor: DataCursor
    """The data cursor at the start of the round."""
    holding: dict[Part, tuple[int, ...]]
    holds: tuple[int, ...]
    """The blocks this worker trained in the round."""
    snapshot: Snapshot
    loss: float
    compute_s: float
    steps: int


@dataclass
class ElasticWorker:
    """What one elastic worker carries from quorum to quorum."""

    name: str
    cfg: Config
    out: Path | None
    write: bool
    """Whether this worker writes metrics.jsonl and summary.json when it is rank 0 of a quorum."""
    build: Callable[[Communicator], Algorithm]
    batches: ElasticBatches
    evaluator_of: Callable[[Algorithm], Any]
    n_train: int
    n_classes: int
    spe0: int
    """Steps per epoch of each of ``--workers`` workers: the unit of the learning-rate schedule's steps."""
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    digest: str = ""
    algo: Algorithm | None = None
    comm: Communicator | None = None
    trained: Trained | None = None
    kept: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    parallel_s: float = 0.0
    best: float | None = None
    best_time: float = 0.0
    """Parallel training time when the best score was reached."""
    started: float = field(default_factory=time.perf_counter)
    run_started: float = field(default_factory=time.time)
    """When the run began (wall clock): the earliest start any member reports, so that a row's elapsed
    time is the run's, whichever incarnation of which worker writes it."""
    faults: list = field(default_factory=from_env)
    on_round: Callable[[int], None] | None = None
    computing: Any = contextlib.nullcontext
    """A context for computing on the device: in-process, a lock, since the simulated workers share the
    process's random generator (parts are initialized from it under a seed) and its cores."""
    kill: Callable[[], None] | None = None
    """How a ``kill`` fault ends this worker (in-process: the thread; else SIGKILL of the process)."""
    sent: int = 0
    received: int = 0
    """Training bytes this worker sent and received since it (this incarnation) started."""
    redone: int = 0
    """Synchronizations of the current round that a member's loss interrupted (each was redone)."""
    peak_extra: int = 0
    """Most bytes of snapshot plus kept copies this worker held at once (elastic training's memory)."""

    def report(self) -> Report:
        t = self.trained
        if t is None:
            return Report(self.token, self.digest)
        return Report(self.token, self.digest, t.round, t.holds, tuple(sorted(self.kept)), t.cursor.to_dict(),
                      t.members, {"loss": t.loss, "compute_s": t.compute_s, "steps": t.steps,
                                  "parallel_s": self.parallel_s, "best": self.best, "run_started": self.run_started})


def run_elastic_worker(membership, cfg: Config, dataset, out: Path | None, write: bool = True,
                       kill: Callable[[], None] | None = None, faults: list | None = None,
                       on_round: Callable[[int], None] | None = None, computing=None) -> dict[str, Any] | None:
    """One worker's whole elastic run; returns the summary (on the worker that wrote it; None elsewhere).

    ``kill``: how a ``kill`` fault ends this worker; ``faults``: instead of ``RESIST_FAULTS`` (a fault's
    rank -1 matches any rank); ``on_round(r)``: called as this worker begins round ``r``'s local steps."""
    from .build import build_algorithm, num_classes_of, resolve_device

    device = resolve_device(cfg.run.device)
    d = cfg.data
    task = make_task(d.task)
    if not hasattr(dataset, "train") or not hasattr(dataset.train, "x"):
        raise ValueError(f"elastic training reads in-memory images (cifar10, cifar100, synthetic); "
                         f"{d.dataset} is not one")
    n_classes = num_classes_of(cfg, dataset)
    spe0 = usable_positions(dataset.n_train, d.batch_size) // (d.batch_size * cfg.algo.workers)
    batches = ElasticBatches(dataset.train, dataset.mean, dataset.std, cfg.run.seed, augment=d.augment)
    plain = ElasticBatches(dataset.train, dataset.mean, dataset.std, cfg.run.seed + 1, augment=False)
    sets = dataset.eval_sets(d.eval_batch_size, d.eval_limit)
    recal = lambda: (plain.batch_at(0, range(k * d.batch_size, (k + 1) * d.batch_size))  # noqa: E731
                     for k in range(cfg.algo.recalib_batches))

    def evaluator_of(algo: Algorithm):
        return make_task(d.task, algo.store.model).evaluator(sets, recal, cfg.algo.bn_eval, device)

    w = ElasticWorker(membership.worker_id, cfg, out, write,
                      lambda comm: build_algorithm(comm, cfg, n_classes, device, max(1, spe0)), batches,
                      evaluator_of, dataset.n_train, n_classes, max(1, spe0), kill=kill, on_round=on_round)
    if faults is not None:
        w.faults = faults
    if computing is not None:
        w.computing = computing
    w.digest = config_digest(cfg)
    precision = Precision(cfg.run.amp, device)
    summary = None
    try:
        while True:
            q, decision, waited = form_quorum(w, membership)
            if decision is None:
                continue
            if decision.start:
                try:
                    w.comm = membership.communicator(q, cfg.run.timeout)
                except CommError as e:  # a member died before its group was set up: ask again
                    log.info("the group of the first quorum could not be set up (%s); asking again", e)
                    continue
                with w.computing():
                    w.algo = w.build(w.comm)
                    w.algo.start(0)
                cursor = DataCursor(0, ())
                round_ = 0
            else:
                done = sync_round(w, membership, q, decision, waited)
                if done is None:  # a member failed during the synchronization: form the quorum again
                    continue
                cursor, finished = done
                round_ = decision.round + 1
                if finished:
                    summary = finish(w)
                    break
            with w.computing():
                train_elastic_round(w, round_, q.members, cursor, precision, task, device, spe0)
    finally:
        w.batches.close()
        membership.leave()
    return summary


def form_quorum(w: ElasticWorker, membership) -> tuple[Any, Decision | None, float]:
    """The next quorum and its decision; ``None`` for a quorum to form again (a fresh start that
    misses workers or is split evenly between configs, or a worker of another config still in it).
    Refused and Unrecoverable end this worker with one line."""
    t0 = time.perf_counter()
    q = membership.quorum(w.report().to_dict(), w.cfg.run.timeout)
    waited = time.perf_counter() - t0
    reports = [Report.from_dict(x) for x in q.data]
    try:
        decision = decide(q.members, reports, candidates_of(w))
    except Refused as e:
        if reports[q.rank_of(w.name)].digest != reference_digest(reports):
            raise  # this worker is the one of another config: it leaves, with one line
        time.sleep(0.2)  # the other worker is refused and leaves; its heartbeat stops
        log.warning("%s", e)
        return q, None, waited
    except Split as e:
        # A fresh quorum split evenly between configs: wait for the run's other workers to break the tie,
        # no longer than the timeout, as a start short of workers does.
        if time.perf_counter() - w.started > w.cfg.run.timeout:
            raise Refused(f"worker {w.name}: {e}") from None
        time.sleep(0.1)
        return q, None, waited
    if decision.start and len(q.members) < w.cfg.algo.workers:
        # Round 0 waits for all --workers, so that a run's start does not depend on timing; a worker
        # alone after the run it came to join has ended waits no longer than the timeout.
        if time.perf_counter() - w.started > w.cfg.run.timeout:
            raise CommError(f"worker {w.name}: {len(q.members)} of --workers {w.cfg.algo.workers} workers came "
                            f"within {w.cfg.run.timeout:g} s ({', '.join(q.members)}), and no run was in progress")
        time.sleep(0.1)
        return q, None, waited
    return q, decision, waited


def candidates_of(w: ElasticWorker) -> tuple[int, ...]:
    """The blocks a plan deals (none for local SGD), known before this worker has an algorithm."""
    if w.algo is None:  # a joiner: from the architecture on the meta device
        from ..plan import candidate_blocks
        from ..registry import can
        from .build import model_builder

        if not can(w.cfg.algo.name, "partitions"):
            return ()
        model = model_builder(w.cfg, w.n_classes)()
        return tuple(candidate_blocks(model.partitionable, model.skippable, w.cfg.algo.partition))
    return tuple(w.algo.store.candidates) if w.algo.partitions else ()


def sync_round(w: ElasticWorker, membership, q, d: Decision, waited: float):
    """Synchronize round ``d.round`` over quorum ``q``; returns (the data cursor after it, whether the
    run is finished), or None if a member failed during it (this worker's state is restored)."""
    cfg = w.cfg
    t0 = time.perf_counter()
    try:
        comm = membership.communicator(q, cfg.run.timeout)
    except CommError as e:  # a member died between the quorum and its group's setup: ask again
        log.info("round %d: the quorum's group could not be set up (%s); asking again", d.round, e)
        w.redone += 1
        return None
    if w.algo is None:  # a joiner
        with w.computing():
            w.algo = w.build(comm)
    n, batch = w.n_train, cfg.data.batch_size
    previous = d.previous
    survivors = {q.members[i] for i in d.contributors}
    round_deal = deal(DataCursor.from_dict(d.cursor), n, batch, [local_steps(cfg, n, DataCursor.from_dict(d.cursor),
                                                                             len(previous))] * len(previous))
    kept = [name in survivors for name in previous]
    cursor = commit(DataCursor.from_dict(d.cursor), round_deal, kept, n, batch)
    finished = examples_done(cursor, n, batch) >= cfg.optim.epochs - 1e-9 or (
        cfg.run.max_rounds is not None and d.round + 1 >= cfg.run.max_rounds)
    try:
        out = synchronize(w.algo, comm, d, w.kept, final=finished)
    except CommError as e:
        log.info("round %d: a member failed during the synchronization (%s); redoing it", d.round, e)
        if w.trained is not None:
            restore(w.algo, w.trained.snapshot, w.trained.holding)
        else:
            w.algo = None  # a joiner starts over
        w.redone += 1
        return None
    sync_s = time.perf_counter() - t0
    w.comm = comm
    extra = (w.trained.snapshot.nbytes() if w.trained else 0) + sum(
        f.numel() * f.element_size() for v in w.kept.values() for f in v) + out.kept_bytes
    w.peak_extra = max(w.peak_extra, extra)
    w.kept = out.kept
    w.sent += comm.bytes.sent["sync"]
    w.received += comm.bytes.received["sync"]
    stats = gather_stats(comm, w, out, sync_s)
    record_round(w, q, d, cursor, stats, waited)
    w.trained = None
    evaluate_round(w, d.round, finished)
    return cursor, finished


def local_steps(cfg: Config, n: int, cursor: DataCursor, world: int) -> int:
    """Local steps of every member in a round that starts at ``cursor``: ``local_iters``, or fewer in the
    last round, where what is left of the last epoch would not fill them."""
    batch = cfg.data.batch_size
    usable = usable_positions(n, batch)
    left = (cfg.optim.epochs - examples_done(cursor, n, batch)) * usable
    return max(1, min(cfg.algo.local_iters, math.ceil(left / (batch * world))))


def train_elastic_round(w: ElasticWorker, round_: int, members: tuple[str, ...], cursor: DataCursor,
                        precision: Precision, task, device: torch.device, spe0: int) -> None:
    """This worker's local steps of ``round_`` (its batches from the round's deal), then the snapshot
    that a failed synchronization goes back to."""
    cfg, algo = w.cfg, w.algo
    me, world = members.index(w.name), len(members)
    if w.on_round is not None:
        w.on_round(round_)
    algo.begin_round(round_)
    opt = make_optimizer(algo.store, cfg.optim)
    precision.new_round()
    n, batch = w.n_train, cfg.data.batch_size
    steps = local_steps(cfg, n, cursor, world)
    mine = deal(cursor, n, batch, [steps] * world).batches(me)
    total = max(1, math.ceil(cfg.optim.epochs * spe0))
    done = examples_done(cursor, n, batch) * spe0
    layout = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    t0, losses = time.perf_counter(), []
    for k, (epoch, positions) in enumerate(mine):
        step = round_ * cfg.algo.local_iters + k
        poisoned = fire(w.faults, me, round_, step, w.kill) if w.faults else False
        t_step = time.perf_counter()
        x, y = w.batches.batch_at(epoch, positions)
        lr = lr_at(cfg.optim, min(total - 1, int(done + k * world / cfg.algo.workers)), total)
        loss = train_step(algo.store.model, opt, x.to(device, memory_format=layout), y.to(device), lr,
                          algo.after_backward, precision, make_task(cfg.data.task).loss)
        losses.append(loss * float("nan") if poisoned else loss)
        slow = slowdown(w.faults, me, round_, step) if w.faults else 1.0
        if slow > 1:
            time.sleep((slow - 1) * (time.perf_counter() - t_step))
    loss = torch.stack(losses).mean().item()
    if not math.isfinite(loss):
        raise RuntimeError(f"loss became {loss} on worker {w.name} in round {round_}; lower --lr or check the data")
    compute_s = time.perf_counter() - t0
    holding = dict(algo.holders(round_)) if algo.partitions else {}
    holds = tuple(b for b, held_by in holding.items() if me in held_by)
    w.trained = Trained(round_, members, cursor, holding, holds, Snapshot.of(algo, holding), loss, compute_s,
                        len(mine))


def gather_stats(comm: Communicator, w: ElasticWorker, out, sync_s: float) -> torch.Tensor:
    """Every member's figures of the synchronization, one row each (control traffic)."""
    mine = torch.tensor([sync_s, out.restore_bytes, out.backup_bytes, out.received_bytes, out.kept_bytes,
                         w.sent, w.received, w.peak_extra], dtype=torch.float64)
    with comm.tag("control"):
        return torch.stack(comm.all_gather(mine))


def record_round(w: ElasticWorker, q, d: Decision, cursor: DataCursor, stats: torch.Tensor, waited: float) -> None:
    """The round's row of metrics.jsonl, with its membership events (rank 0 of the quorum writes it)."""
    reports = [Report.from_dict(x) for x in q.data]
    trained = [reports[i].progress for i in d.contributors]
    compute = max(p["compute_s"] for p in trained)
    w.parallel_s = max(p.get("parallel_s", 0.0) for p in trained) + compute + float(stats[:, 0].max())
    w.run_started = min([w.run_started, *(p.get("run_started", w.run_started) for p in trained)])
    events = []
    at = time.time()
    for name in d.lost:
        events.append({"event": "lost", "worker": name, "round": d.round, "at": at, "quorum_wait_s": waited,
                       "restored_blocks": len(d.restored), "rounds_lost": 1 if d.restored else 0,
                       "recovery_bytes": int(stats[:, 1].sum())})
    for i in d.joiners:
        events.append({"event": "joined", "worker": q.members[i], "round": d.round, "at": at,
                       "join_bytes": int(stats[i, 3])})
    epoch = examples_done(cursor, w.n_train, w.cfg.data.batch_size)
    row = {"round": d.round, "step": round(epoch * w.spe0), "epoch": epoch,
           "loss": sum(p["loss"] for p in trained) / len(trained), "compute_s": compute,
           "comm_s": float(stats[:, 0].max()), "time_s": w.parallel_s, "elapsed_s": time.time() - w.run_started,
           "members": list(q.members), "quorum_id": q.id,
           "sent_bytes": [int(v) for v in stats[:, 5]], "recv_bytes": [int(v) for v in stats[:, 6]],
           "backup_bytes": int(stats[:, 2].sum()), "kept_bytes_per_worker": [int(v) for v in stats[:, 4]],
           "elastic_extra_bytes_per_worker": [int(v) for v in stats[:, 7]],
           "compute_s_per_worker": [p["compute_s"] for p in trained], "redone": w.redone, "events": events}
    w.redone = 0
    w.rows.append(row)


def evaluate_round(w: ElasticWorker, round_: int, finished: bool) -> None:
    """Every ``eval_every`` rounds and at the end: the assembled model's scores, in the round's row. A
    member lost during the evaluation costs only that evaluation (the round is already committed)."""
    row = w.rows[-1]
    if (round_ + 1) % w.cfg.run.eval_every == 0 or finished:
        try:
            scores = w.algo.evaluate(w.evaluator_of(w.algo))
        except CommError as e:
            log.info("round %d: evaluation skipped, a member was lost during it (%s)", round_, e)
            scores = None
        if scores is not None:
            task = make_task(w.cfg.data.task)
            score = scores[task.headline]
            if task.better(score, w.best if w.best is not None else task.worst):
                w.best, w.best_time = score, w.parallel_s
            row.update(task.record(scores, w.best))
    if w.write and w.out is not None and w.comm.rank == 0:
        with open(w.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if any(k.startswith("test/") for k in row):
            log.info("round %d  epoch %.2f  loss %.4f  %s  members %s", round_ + 1, row["epoch"], row["loss"],
                     "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith("test/")), ",".join(row["members"]))


def finish(w: ElasticWorker) -> dict[str, Any] | None:
    """The end of the run: rank 0 of the last quorum writes the final model and the summary."""
    from ..algorithms.parts import assemble

    algo, comm = w.algo, w.comm
    model = assemble(comm, algo.store, algo.holders_now(), algo.eval_scale())
    if comm.rank != 0:
        return None
    rows = read_rows(w)
    task = make_task(w.cfg.data.task)
    events = [e for r in rows for e in r.get("events", [])]
    summary = {"algo": w.cfg.algo.name, "model": w.cfg.model.name, "width": w.cfg.model.width, "runtime": "elastic",
               "workers": w.cfg.algo.workers, "final_members": list(w.rows[-1]["members"]) if w.rows else [],
               "rounds": (w.rows[-1]["round"] + 1) if w.rows else 0, **task.summary(rows),
               "time_s": w.parallel_s, "time_to_best_s": w.best_time, "elapsed_s": time.time() - w.run_started,
               "membership_events": events,
               "lost": sum(e["event"] == "lost" for e in events), "joined": sum(e["event"] == "joined" for e in events),
               "backup_bytes": sum(r.get("backup_bytes", 0) for r in rows),
               "elastic_extra_bytes_per_worker": w.rows[-1]["elastic_extra_bytes_per_worker"] if w.rows else [],
               "sent_bytes_per_worker": w.rows[-1]["sent_bytes"] if w.rows else []}
    if w.write and w.out is not None:
        from ..io import atomic_save

        atomic_save(model.state_dict(), w.out / "model.pt")
        atomic_write_json(summary, w.out / "summary.json")
    return summary


def read_rows(w: ElasticWorker) -> list[dict[str, Any]]:
    """The run's rows: metrics.jsonl where this worker writes it (the rounds other workers led are in it
    too), else the rows this worker saw."""
    path = w.out / "metrics.jsonl" if w.out is not None else None
    if w.write and path is not None and path.exists():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return list(w.rows)


def run_elastic_in_process(cfg: Config, dataset, out: Path | None, kills: dict[str, tuple[int, int]] | None = None,
                           joins: dict[str, int] | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """The in-process twin of ``--runtime elastic``: ``cfg.algo.workers`` workers w0, w1, ... as threads,
    on :class:`~resist.comm.membership.LocalCoordinator`, running the same worker code.

    ``kills``: worker -> (round, local step) at which it dies (its thread ends; what it trained in that
    round is lost). ``joins``: worker -> round during whose local steps it starts (it joins at that
    round's end). A membership history is thus replayed exactly, whatever the timing. Returns the
    summary; raises the first error of a worker that failed otherwise."""
    import threading

    from ..comm.membership import LocalCoordinator, LocalMembership

    kills, joins = dict(kills or {}), dict(joins or {})
    coordinator = LocalCoordinator(min_workers=cfg.run.min_workers)
    results: dict[str, Any] = {}
    errors: list[BaseException] = []
    device = threading.Lock()
    threads: list[threading.Thread] = []
    lock = threading.Lock()

    def on_round(round_: int) -> None:
        with lock:
            due = [name for name, r in joins.items() if r == round_]
            for name in due:
                del joins[name]
                start(name)

    def start(name: str) -> None:
        membership = LocalMembership(coordinator, name)  # registered now: it joins at the coming round's end
        threads.append(threading.Thread(target=worker, args=(name, membership), name=f"elastic-{name}", daemon=True))
        threads[-1].start()

    def worker(name: str, membership) -> None:
        faults = []
        if name in kills:
            from ..faults import Fault

            r, step = kills.pop(name)
            faults = [Fault("kill", rank=-1, round=r, step=r * cfg.algo.local_iters + step)]

        def die() -> None:
            coordinator.kill(name)
            raise WorkerLost(name)

        try:
            results[name] = run_elastic_worker(membership, cfg, dataset, out, write=True, kill=die,
                                               faults=faults, on_round=on_round, computing=lambda: device)
        except WorkerLost:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            errors.append(e)
            coordinator.kill(name)

    # One intra-op thread, as each worker process of --runtime elastic has: the kernels' reduction order
    # (and so the last bits, which training amplifies) depends on it.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(cfg.algo.workers):
            start(f"w{i}")
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in list(threads)):
            if time.monotonic() > deadline:
                raise CommError(f"in-process elastic run did not end within {timeout:g} s")
            time.sleep(0.02)
    finally:
        torch.set_num_threads(threads_before)
    if errors:
        raise errors[0]
    summaries = [s for s in results.values() if s is not None]
    if not summaries:
        raise CommError("in-process elastic run: no worker finished the run")
    return summaries[0]
