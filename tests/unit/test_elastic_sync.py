"""Elastic synchronization against an independent reference of its recovery rule (docs/elastic.md).

Three ResIST workers (threads on the in-process coordinator) synchronize one round, "train" a second
one by adding a known amount to everything they hold, and then one of them is lost (or one joins):
the global model after the second synchronization must be what the rule says, computed here by hand
from the first round's committed model: a block that a survivor trained is the survivors' average, a
block only the lost worker trained is its committed value, the shared layers are the survivors'
average.
"""

import threading

import pytest
import torch

from resist.algorithms.elastic import Snapshot, restore, synchronize
from resist.comm import CommError
from resist.algorithms.parts import gather_state
from resist.algorithms.recovery import Report, decide
from resist.comm.membership import LocalCoordinator, LocalMembership
from resist.presets import preset
from resist.train.trainer import build_algorithm

pytestmark = pytest.mark.timeout(120)


def config(algo="resist"):
    return preset("smoke").replace(**{"run.runtime": "elastic", "algo.workers": 3, "algo.name": algo})


def fake_train(algo, rank: int, round_: int) -> None:
    """Stand-in for local steps: add a known amount, different per worker and round, to every float
    value the worker holds (its shared layers and its blocks)."""
    with torch.no_grad():
        for flats in algo.store.flats.values():
            for f in flats:
                if f.is_floating_point():
                    f.add_(0.01 * (rank + 1) * (round_ + 1))


def delta(rank: int, round_: int) -> float:
    return 0.01 * (rank + 1) * (round_ + 1)


def run(cfg, lose=None, join=None, in_sync=False, redone=None):
    """Round 0 over w0..w2, then round 1 (``lose`` is lost during it, ``join`` joins at its end); returns
    the global state after round 0 and after round 1, and round 1's plan (holders by round-1 rank)."""
    coordinator = LocalCoordinator(min_workers=1)
    members = {n: LocalMembership(coordinator, n) for n in ("w0", "w1", "w2")}
    states, holders1, errors = {}, {}, []
    threads = []
    redone = [] if redone is None else redone

    def admit_joiner():  # after round 0's synchronization: it joins at round 1's end
        if join:
            nonlocal join_membership
            join_membership = LocalMembership(coordinator, join)
            threads.append(threading.Thread(target=joiner))
            threads[-1].start()

    join_membership = None
    barrier = threading.Barrier(3, action=admit_joiner)

    def report(name, algo, round_, kept, trained_members):
        holds = tuple(b for b, h in algo.holders(round_).items() if algo.comm.rank in h) if algo.partitions else ()
        return Report(name, "d", round_, holds, tuple(sorted(kept)), {"epoch": 0, "used": []}, trained_members).to_dict()

    def worker(name):
        try:
            m = members[name]
            q = m.quorum(Report(name, "d").to_dict(), 30)
            comm = m.communicator(q, 30)
            algo = build_algorithm(comm, cfg, 10, torch.device("cpu"), 10)
            algo.start(0)
            algo.begin_round(0)
            fake_train(algo, comm.rank, 0)
            q = m.quorum(report(name, algo, 0, {}, q.members), 30)
            d = decide(q.members, [Report.from_dict(x) for x in q.data], dealt(algo))
            out = synchronize(algo, m.communicator(q, 30), d, {}, final=False)
            state0 = gather_state(algo.comm, algo.store, algo.holders_now())
            if state0 is not None:
                states[0] = state0
            holders1.update(algo.holders(1) if algo.partitions else {})
            barrier.wait()
            if name == lose and not in_sync:
                coordinator.kill(name)  # lost during round 1: what it trained never arrives
                return
            algo.begin_round(1)
            fake_train(algo, algo.comm.rank, 1)
            holding = dict(algo.holders(1)) if algo.partitions else {}
            snap = Snapshot.of(algo, holding)
            members1 = q.members
            while True:
                q = m.quorum(report(name, algo, 1, out.kept, members1), 30)
                d = decide(q.members, [Report.from_dict(x) for x in q.data], dealt(algo))
                comm = m.communicator(q, 30)
                if name == lose:  # lost during the synchronization: the others' collectives fail
                    if in_sync == "late":  # after the shared layers' all-reduce changed them in place
                        for f in algo.store.flats["shared"]:
                            comm.all_reduce(f)
                    coordinator.kill(name)
                    return
                try:
                    synchronize(algo, comm, d, out.kept, final=True)
                    break
                except CommError:
                    redone.append(name)
                    restore(algo, snap, holding)
            state1 = gather_state(algo.comm, algo.store, algo.holders_now())
            if state1 is not None:
                states[1] = state1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            raise

    def joiner():
        try:
            m = join_membership
            q = m.quorum(Report("j", "d").to_dict(), 30)
            comm = m.communicator(q, 30)
            algo = build_algorithm(comm, cfg, 10, torch.device("cpu"), 10)
            d = decide(q.members, [Report.from_dict(x) for x in q.data], dealt(algo))
            synchronize(algo, comm, d, {}, final=True)
            gather_state(algo.comm, algo.store, algo.holders_now())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            raise

    threads += [threading.Thread(target=worker, args=(n,)) for n in ("w0", "w1", "w2")]
    for t in list(threads):
        t.start()
    for t in threads[:3]:
        t.join(60)
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    return states[0], states[1], holders1


def block_of(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


@pytest.mark.parametrize("lose,in_sync", [("w1", False), ("w0", False), ("w1", True), ("w2", "late")])
def test_a_lost_worker_costs_only_its_own_round(lose, in_sync):
    """Lost during its local steps, or during the synchronization (which the others then redo from
    their snapshots over the survivors), even after the shared layers were averaged in place with its
    copy: the same result."""
    cfg = config()
    redone = []
    state0, state1, holders1 = run(cfg, lose=lose, in_sync=in_sync, redone=redone)
    assert bool(redone) == bool(in_sync)
    lost_rank = int(lose[1])
    survivors = [r for r in range(3) if r != lost_rank]
    restored = 0
    for name, v0 in state0.items():
        if not v0.is_floating_point():
            continue
        b = block_of(name)
        trained = survivors if b not in holders1 else [r for r in holders1[b] if r != lost_rank]
        if not trained:
            restored += 1
        expected = v0 + (sum(delta(r, 1) for r in trained) / len(trained) if trained else 0.0)
        assert torch.allclose(state1[name], expected, atol=1e-6), name
    assert restored > 0  # the lost worker held a block alone: it came back from its keeper


def test_a_joiner_receives_the_average_and_adds_nothing():
    cfg = config()
    state0, state1, holders1 = run(cfg, join="w3")
    for name, v0 in state0.items():
        if not v0.is_floating_point():
            continue
        b = block_of(name)
        trained = [0, 1, 2] if b not in holders1 else list(holders1[b])
        expected = v0 + sum(delta(r, 1) for r in trained) / len(trained)
        assert torch.allclose(state1[name], expected, atol=1e-6), name


def test_local_sgd_survivors_average_the_whole_model():
    cfg = config("local_sgd")
    state0, state1, _ = run(cfg, lose="w2")
    for name, v0 in state0.items():
        if v0.is_floating_point():
            assert torch.allclose(state1[name], v0 + (delta(0, 1) + delta(1, 1)) / 2, atol=1e-6), name


def dealt(algo):
    return algo.store.candidates if algo.partitions else ()
