"""The in-process membership twin: threads as workers, the Lighthouse's quorum rules, kills and joins."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from resist.comm import CommError
from resist.comm.membership import LocalCoordinator, LocalMembership, Quorum


def _run(fns: dict, timeout: float = 20.0) -> dict:
    """Run each ``fns[name]()`` in a thread; return their results (or the exceptions they raised)."""
    out = {}

    def body(name, fn):
        try:
            out[name] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[name] = exc

    threads = [threading.Thread(target=body, args=item, daemon=True) for item in fns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    return out


def test_quorum_ranks_are_the_sorted_members_and_unknown_workers_are_named():
    q = Quorum(id=3, members=("a", "b", "c"), data=({}, {}, {}))
    assert [q.rank_of(w) for w in "abc"] == [0, 1, 2]
    with pytest.raises(KeyError, match="'z' is not in quorum 3"):
        q.rank_of("z")


@pytest.mark.timeout(30)
def test_every_live_worker_gets_the_same_quorum_and_the_verbs_sum_in_rank_order():
    coordinator = LocalCoordinator(min_workers=3)
    members = {w: LocalMembership(coordinator, w) for w in ("c", "a", "b")}

    def worker(m):
        def run():
            q = m.quorum({"step": 4, "name": m.worker_id}, timeout=10)
            comm = m.communicator(q, timeout=10)
            t = torch.full((3,), 0.1 * (comm.rank + 1), dtype=torch.float64)
            comm.all_reduce(t)
            buf = torch.empty(2)
            w, r = comm.world_size, comm.rank
            comm.exchange([((r + 1) % w, torch.full((2,), float(r)))], [((r - 1) % w, buf)])
            return q, comm.rank, t, buf, comm.all_gather(torch.tensor([r]))
        return run

    out = _run({w: worker(m) for w, m in members.items()})
    quorums = {w: o[0] for w, o in out.items()}
    assert len(set(quorums.values())) == 1
    q = quorums["a"]
    assert q.members == ("a", "b", "c") and q.data == tuple({"step": 4, "name": w} for w in "abc")
    expected = (torch.tensor(0.1, dtype=torch.float64) + 0.2) + 0.3  # rank order, every rank alike
    for w, (_, rank, t, buf, gathered) in out.items():
        assert rank == "abc".index(w)
        assert torch.equal(t, torch.full((3,), expected.item(), dtype=torch.float64))
        assert buf.tolist() == [float((rank - 1) % 3)] * 2
        assert [g.item() for g in gathered] == [0, 1, 2]


@pytest.mark.timeout(30)
def test_a_killed_worker_fails_its_peers_collective_at_once_and_the_survivors_form_a_two_member_quorum():
    coordinator = LocalCoordinator(min_workers=2)
    members = {w: LocalMembership(coordinator, w) for w in ("w0", "w1", "w2")}
    blocked = threading.Barrier(3)
    killed_at = {}

    def survivor(m):
        def run():
            q = m.quorum({"step": 0}, timeout=10)
            comm = m.communicator(q, timeout=60)
            blocked.wait()
            try:  # a plain try: under load pytest.raises' failure would hide what happened
                comm.all_reduce(torch.ones(2))
                return "the all-reduce returned although rank 2 died"
            except CommError as e:
                if not str(e).startswith(f"rank {comm.rank}: "):
                    return f"unexpected error: {e}"
            detected = time.monotonic() - killed_at["t"]
            q2 = m.quorum({"step": 1}, timeout=10)
            comm2 = m.communicator(q2, timeout=10)
            t = torch.full((2,), float(comm2.rank + 1))
            comm2.all_reduce(t)
            return q.id, q2, detected, t.tolist()
        return run

    def victim():
        m = members["w2"]
        q = m.quorum({"step": 0}, timeout=10)
        comm = m.communicator(q, timeout=60)
        blocked.wait()
        time.sleep(0.3)  # the others are in the all-reduce by now
        killed_at["t"] = time.monotonic()
        m.die()
        with pytest.raises(CommError, match="^worker w2 was killed$"):
            m.quorum({"step": 1}, timeout=1)
        with pytest.raises(CommError):
            comm.all_reduce(torch.ones(2))  # its group is aborted

    out = _run({"w0": survivor(members["w0"]), "w1": survivor(members["w1"]), "w2": victim})
    assert out["w2"] is None
    for w in ("w0", "w1"):
        assert isinstance(out[w], tuple), out[w]
        first_id, q2, detected, total = out[w]
        assert q2.members == ("w0", "w1") and q2.id > first_id
        assert detected < 0.5
        assert total == [3.0, 3.0]
    assert coordinator.live() == ["w0", "w1"]


@pytest.mark.timeout(30)
def test_a_joiner_waits_for_the_members_round_end_and_then_all_share_the_next_quorum():
    coordinator = LocalCoordinator(min_workers=1)
    log = []  # (worker, step, quorum id, members, asked, got, sum)
    lock = threading.Lock()
    second_round = threading.Event()

    def rounds(m, last_step):
        def run():
            step = 0
            while step < last_step:
                asked = time.monotonic()
                q = m.quorum({"step": step}, timeout=10)
                got = time.monotonic()
                step = max(d["step"] for d in q.data)
                comm = m.communicator(q, timeout=10)
                t = torch.ones(1)
                comm.all_reduce(t)
                with lock:
                    log.append((m.worker_id, step, q.id, q.members, asked, got, t.item()))
                if step == 1:
                    second_round.set()
                step += 1
                time.sleep(0.3)  # compute
            m.leave()
        return run

    first = {w: LocalMembership(coordinator, w) for w in ("w0", "w1")}

    def joiner():
        second_round.wait(10)
        time.sleep(0.1)  # mid-round
        return rounds(LocalMembership(coordinator, "w2"), 5)()

    _run({"w0": rounds(first["w0"], 5), "w1": rounds(first["w1"], 5), "w2": joiner})
    mine = [r for r in log if r[0] == "w2"]
    assert mine, "the joiner never got in"
    entry = mine[0]
    assert entry[3] == ("w0", "w1", "w2") and entry[6] == 3.0
    members_asks = [r[4] for r in log if r[0] != "w2" and r[2] == entry[2]]
    assert len(members_asks) == 2 and entry[5] >= max(members_asks) > entry[4]  # it waited for them
    for r in log:
        assert r[6] == len(r[3])
        if r[2] >= entry[2]:
            assert r[3] == ("w0", "w1", "w2")
    assert coordinator.live() == []


@pytest.mark.timeout(30)
def test_a_live_worker_that_does_not_ask_is_waited_for_until_the_timeout_and_named():
    coordinator = LocalCoordinator(min_workers=1)
    a = LocalMembership(coordinator, "a")
    LocalMembership(coordinator, "slow")  # live, but never asks
    t0 = time.monotonic()
    with pytest.raises(CommError, match=r"^worker a: no quorum within 0.3 s \(waiting for \['slow'\]\)$"):
        a.quorum({}, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2.0
    coordinator.kill("slow")  # its death lets the quorum form without it
    assert a.quorum({}, timeout=1).members == ("a",)


@pytest.mark.timeout(30)
def test_min_workers_holds_the_first_quorum_back():
    coordinator = LocalCoordinator(min_workers=2)
    a = LocalMembership(coordinator, "a")
    with pytest.raises(CommError, match="no quorum within"):
        a.quorum({}, timeout=0.2)
    b = LocalMembership(coordinator, "b")
    out = _run({"a": lambda: a.quorum({}, timeout=5), "b": lambda: b.quorum({}, timeout=5)})
    assert out["a"] == out["b"] and out["a"].members == ("a", "b")


@pytest.mark.timeout(30)
def test_a_duplicate_live_worker_id_is_refused_and_a_dead_ones_can_come_back():
    coordinator = LocalCoordinator()
    first = LocalMembership(coordinator, "w0")
    with pytest.raises(CommError, match=r"^worker id 'w0' is already used by another live worker"):
        LocalMembership(coordinator, "w0")
    first.die()
    again = LocalMembership(coordinator, "w0")
    assert again.quorum({"step": 0}, timeout=1).members == ("w0",)
    with pytest.raises(CommError, match="^worker w0 was killed$"):
        first.quorum({}, timeout=1)


@pytest.mark.timeout(30)
def test_a_peer_that_abandons_the_group_times_its_peers_out_instead_of_deadlocking():
    coordinator = LocalCoordinator(min_workers=2)
    a, b = LocalMembership(coordinator, "a"), LocalMembership(coordinator, "b")

    def waits():
        comm = a.communicator(a.quorum({}, timeout=5), timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(CommError, match="timed out"):
            comm.all_reduce(torch.ones(1))
        return time.monotonic() - t0

    def abandons():
        b.communicator(b.quorum({}, timeout=5), timeout=0.5)
        time.sleep(1.5)  # alive, but never takes part

    out = _run({"a": waits, "b": abandons})
    assert 0.5 <= out["a"] < 1.4


@pytest.mark.timeout(30)
def test_peers_computing_for_a_while_are_not_a_stall():
    """Without the device token the threads compute side by side; a rank waits only for the slowest."""
    coordinator = LocalCoordinator(min_workers=3)
    members = [LocalMembership(coordinator, w) for w in ("a", "b", "c")]

    def worker(m):
        def run():
            comm = m.communicator(m.quorum({}, timeout=5), timeout=0.5)
            for _ in range(4):
                time.sleep(0.3)
                comm.barrier()
            return comm.rank
        return run

    out = _run({m.worker_id: worker(m) for m in members})
    assert out == {"a": 0, "b": 1, "c": 2}


def test_quorum_data_must_be_json():
    coordinator = LocalCoordinator()
    m = LocalMembership(coordinator, "a")
    with pytest.raises(TypeError, match="JSON"):
        m.quorum({"x": object()}, timeout=1)
