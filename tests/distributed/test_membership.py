"""Elastic membership on torchft's Lighthouse, with worker processes (gloo on 127.0.0.1).

Workers are spawned processes that report to the test through a queue; their functions are
module-level because ``spawn`` pickles them by reference. Times are ``time.time()``, comparable across
processes of one machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import pytest
import torch

os.environ.setdefault("RUST_LOG", "warn")  # before torchft's import: it logs every quorum tick at INFO
pytest.importorskip("torchft")

from resist.comm import CommError  # noqa: E402
from resist.comm.membership import (  # noqa: E402
    LocalCoordinator, LocalMembership, TorchftMembership, start_lighthouse,
)

CTX = mp.get_context("spawn")


@pytest.fixture
def lighthouse(request):
    servers = []

    def start(min_workers: int):
        server = start_lighthouse(bind="[::]:0", min_workers=min_workers)
        servers.append(server)
        return server.address()

    yield start
    for s in servers:
        s.shutdown()


def _get(q, n, timeout=60.0):
    out = []
    for _ in range(n):
        out.append(q.get(timeout=timeout))
    return out


def _stop(procs):
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(5)


def _verbs(comm):
    """Every verb once, on values that make a wrong rank or order visible."""
    r, w = comm.rank, comm.world_size
    out = {}
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (r + 1)
    comm.all_reduce(t)
    out["sum"] = t
    t = torch.tensor([r * 10**12 + 7, 3 * r + 1], dtype=torch.int64)
    comm.all_reduce(t, average=True)
    out["avg_i64"] = t
    t = torch.full((4,), float(r + 1))
    comm.all_reduce_async(t, average=True).wait()
    out["avg_async"] = t
    t = torch.full((4,), float(r)) if r == 1 else torch.zeros(4)
    comm.broadcast(t, src=1)
    out["bcast"] = t
    out["gather"] = comm.all_gather(torch.tensor([r, r * r], dtype=torch.int32))
    # Two messages each way between every pair, of different sizes: matched in list order.
    sends = [(p, torch.full((k + 1,), 10.0 * r + p + k / 10, dtype=torch.float64))
             for p in range(w) if p != r for k in range(2)]
    recvs = [(p, torch.empty(k + 1, dtype=torch.float64)) for p in range(w) if p != r for k in range(2)]
    comm.exchange(sends, recvs)
    out["exchange"] = [buf for _, buf in recvs]
    with comm.tag("eval"):
        t = torch.ones(7, dtype=torch.float16)
        comm.all_reduce(t)
        out["eval"] = t
    comm.barrier()
    return out, comm.bytes.snapshot()


def _plain(obj):
    """Tensors as (dtype, values): a tensor in a queue is shared memory that dies with its process."""
    if isinstance(obj, torch.Tensor):
        return str(obj.dtype), obj.tolist()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _verbs_worker(addr, wid, q, barrier):
    m = TorchftMembership(addr, wid)
    barrier.wait()
    quorum = m.quorum({"step": 0, "who": wid}, timeout=60)
    comm = m.communicator(quorum, timeout=30)
    q.put((wid, quorum.id, quorum.members, quorum.data, comm.rank, *_plain(_verbs(comm))))
    m.leave()


@pytest.mark.timeout(120)
def test_three_workers_form_a_quorum_and_every_verb_matches_the_in_process_twin(lighthouse):
    addr = lighthouse(min_workers=3)
    q, barrier = CTX.Queue(), CTX.Barrier(3)
    procs = [CTX.Process(target=_verbs_worker, args=(addr, f"w{i}", q, barrier)) for i in (2, 0, 1)]
    for p in procs:
        p.start()
    got = {r[0]: r for r in _get(q, 3)}
    _stop(procs)

    coordinator = LocalCoordinator(min_workers=3)
    members = {wid: LocalMembership(coordinator, wid) for wid in ("w0", "w1", "w2")}
    local = {}

    def thread(wid):
        m = members[wid]
        quorum = m.quorum({"step": 0, "who": wid}, timeout=30)
        comm = m.communicator(quorum, timeout=30)
        local[wid] = (quorum.members, quorum.data, comm.rank, *_plain(_verbs(comm)))

    threads = [threading.Thread(target=thread, args=(wid,)) for wid in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    ids = {g[1] for g in got.values()}
    assert len(ids) == 1
    for wid, (_, _, members_, data, rank, out, nbytes) in got.items():
        assert members_ == ("w0", "w1", "w2")
        assert data == tuple({"step": 0, "who": w} for w in members_)
        assert rank == int(wid[1])
        l_members, l_data, l_rank, l_out, l_bytes = local[wid]
        assert (l_members, l_data, l_rank) == (members_, data, rank)
        assert nbytes == l_bytes
        assert out == l_out
    assert got["w0"][5]["sum"] == ("torch.float32", [[0.0, 6.0, 12.0], [18.0, 24.0, 30.0]])
    # Rank 2's receipts: rank 0's two messages, then rank 1's, each pair in the order they were sent.
    assert [v for _, v in got["w2"][5]["exchange"]] == [[2.0], [2.1, 2.1], [12.0], [12.1, 12.1]]


def _kill_worker(addr, wid, victim, q, barrier):
    m = TorchftMembership(addr, wid)
    barrier.wait()
    quorum = m.quorum({"step": 0}, timeout=60)
    comm = m.communicator(quorum, timeout=60)
    comm.all_reduce(torch.ones(3))
    if wid == victim:
        q.put((wid, "victim ready", time.time(), None))
        time.sleep(600)  # killed here, while the others wait for it in an all-reduce
    q.put((wid, "blocked", time.time(), None))
    try:
        comm.all_reduce(torch.ones(3))
        q.put((wid, "no error", time.time(), None))
        return
    except CommError as exc:
        q.put((wid, "error", time.time(), str(exc)))
    quorum = m.quorum({"step": 1}, timeout=30)
    q.put((wid, "quorum", time.time(), quorum.members))
    comm = m.communicator(quorum, timeout=30)
    t = torch.full((3,), float(comm.rank + 1))
    comm.all_reduce(t)
    q.put((wid, "sum", time.time(), t.tolist()))
    m.leave()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", ["w2", "w0"])  # w0 also serves the quorum's rendezvous store
def test_a_killed_worker_fails_its_peers_collective_at_once_and_the_survivors_form_a_new_quorum(lighthouse, victim):
    addr = lighthouse(min_workers=2)
    q, barrier = CTX.Queue(), CTX.Barrier(3)
    procs = {wid: CTX.Process(target=_kill_worker, args=(addr, wid, victim, q, barrier))
             for wid in ("w0", "w1", "w2")}
    survivors = tuple(w for w in procs if w != victim)
    for p in procs.values():
        p.start()
    ready = _get(q, 3)
    assert sorted(m[1] for m in ready) == ["blocked", "blocked", "victim ready"]
    time.sleep(0.5)  # the survivors are inside the all-reduce by now
    killed_at = time.time()
    os.kill(procs[victim].pid, signal.SIGKILL)
    events = _get(q, 6)
    _stop(procs.values())

    by = {(wid, what): (t, info) for wid, what, t, info in events}
    for wid in survivors:
        t_err, msg = by[(wid, "error")]
        assert msg.startswith(f"rank {int(wid[1])}: all_reduce failed: ") and "\n" not in msg
        assert by[(wid, "quorum")][1] == survivors
        assert by[(wid, "sum")][1] == [3.0, 3.0, 3.0]
    detect = max(by[(w, "error")][0] for w in survivors) - killed_at
    requorum = max(by[(w, "quorum")][0] for w in survivors) - killed_at
    print(f"\n{victim} killed -> CommError on every survivor: {detect:.3f} s; "
          f"kill -> new 2-member quorum: {requorum:.3f} s")
    assert detect < 3.0
    assert requorum < 5.0


def _dies_before_setup(addr, wid, victim, q, barrier):
    """All three get a quorum; the victim dies before setting up its group (no socket to close yet)."""
    m = TorchftMembership(addr, wid, setup_timeout=3.0)
    barrier.wait()
    quorum = m.quorum({}, timeout=30)
    if wid == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.time()
    try:
        m.communicator(quorum, timeout=600)
        q.put((wid, "setup", None))
    except CommError as e:
        q.put((wid, "error", (time.time() - t0, str(e))))
        quorum = m.quorum({}, timeout=30)
        comm = m.communicator(quorum, timeout=600)
        t = torch.ones(2)
        comm.all_reduce(t)
        q.put((wid, "recovered", (quorum.members, t.tolist())))
    m.leave()


@pytest.mark.timeout(120)
def test_a_worker_dead_before_the_group_setup_costs_the_setup_timeout_not_the_collectives(lighthouse):
    addr = lighthouse(min_workers=2)
    q, barrier = CTX.Queue(), CTX.Barrier(3)
    procs = [CTX.Process(target=_dies_before_setup, args=(addr, wid, "w1", q, barrier)) for wid in ("w0", "w1", "w2")]
    for p in procs:
        p.start()
    events = _get(q, 4)
    _stop(procs)
    by = {(wid, what): info for wid, what, info in events}
    for wid in ("w0", "w2"):
        waited, msg = by[(wid, "error")]
        assert waited < 10 and "\n" not in msg  # the setup's 3 s, not the verbs' 600 s
        assert by[(wid, "recovered")] == (("w0", "w2"), [2.0, 2.0])


def _round_worker(addr, wid, q, barrier):
    """The elastic loop in miniature: a quorum per round, one all-reduce, then 1 s of "compute" (longer
    than the heartbeat timeout). The run ends after two rounds of three members, however long the
    joiner takes to start."""
    m = TorchftMembership(addr, wid)
    if barrier is not None:
        barrier.wait()
    step, full_rounds = 0, 0
    while full_rounds < 2:
        asked = time.time()
        quorum = m.quorum({"step": step, "full_rounds": full_rounds}, timeout=60)
        got = time.time()
        step = max(d["step"] for d in quorum.data)  # a joiner takes the members' counts
        full_rounds = max(d["full_rounds"] for d in quorum.data) + (quorum.world_size == 3)
        comm = m.communicator(quorum, timeout=30)
        t = torch.ones(2)
        comm.all_reduce(t)
        q.put((wid, step, quorum.id, quorum.members, asked, got, t[0].item()))
        step += 1
        time.sleep(1.0)
    q.put((wid, "done"))
    m.leave()


@pytest.mark.timeout(120)
def test_a_joiner_waits_for_the_members_round_end_then_all_three_share_the_next_quorum(lighthouse):
    addr = lighthouse(min_workers=1)
    q, barrier = CTX.Queue(), CTX.Barrier(2)
    procs = [CTX.Process(target=_round_worker, args=(addr, wid, q, barrier)) for wid in ("w0", "w1")]
    for p in procs:
        p.start()
    rows = _get(q, 4)  # two rounds of the first two
    assert all(r[3] == ("w0", "w1") for r in rows)
    time.sleep(0.3)  # the members are mid-round (computing) now
    joiner = CTX.Process(target=_round_worker, args=(addr, "w2", q, None))
    joiner.start()
    procs.append(joiner)
    done = 0
    while done < 3:
        row = q.get(timeout=60)
        if row[1] == "done":
            done += 1
        else:
            rows.append(row)
    _stop(procs)

    mine = [r for r in rows if r[0] == "w2"]
    first = mine[0]
    assert first[3] == ("w0", "w1", "w2") and first[6] == 3.0
    # Formed when the members came back at their round end, not when the joiner asked.
    members_asks = [r[4] for r in rows if r[0] != "w2" and r[2] == first[2]]
    assert len(members_asks) == 2 and first[5] >= max(members_asks) > first[4]
    print(f"\njoiner waited {first[5] - first[4]:.2f} s for the members' round end")
    # Never a quorum without a live member: each quorum id is seen with one member list, the full one
    # once the joiner is in.
    seen = {}
    for r in rows:
        assert seen.setdefault(r[2], r[3]) == r[3]
    after = [members for qid, members in seen.items() if qid >= first[2]]
    assert all(members == ("w0", "w1", "w2") for members in after)
    assert all(r[6] == len(r[3]) for r in rows)


def _duplicate_worker(addr, wid, q):
    try:
        m = TorchftMembership(addr, wid)
        q.put((wid, os.getpid(), "asking", None))
        quorum = m.quorum({"step": 0}, timeout=30)
        comm = m.communicator(quorum, timeout=20)
        t = torch.full((2,), float(comm.rank + 1))
        comm.all_reduce(t)
        q.put((wid, os.getpid(), "sum", (quorum.members, t.tolist())))
        m.leave()
    except CommError as exc:
        q.put((wid, os.getpid(), "refused", str(exc)))


@pytest.mark.timeout(120)
def test_two_live_processes_with_one_worker_id_are_told_apart_and_one_is_refused(lighthouse):
    addr = lighthouse(min_workers=2)
    q = CTX.Queue()
    dups = [CTX.Process(target=_duplicate_worker, args=(addr, "dup", q)) for _ in range(2)]
    for p in dups:
        p.start()
    assert [m[2] for m in _get(q, 2)] == ["asking", "asking"]
    time.sleep(1.0)  # both duplicates' quorum requests are at the Lighthouse (one id: no quorum yet)
    other = CTX.Process(target=_duplicate_worker, args=(addr, "w0", q))
    other.start()
    events = [m for m in _get(q, 4) if m[2] != "asking"]
    _stop(dups + [other])

    refused = [m for m in events if m[2] == "refused"]
    summed = [m for m in events if m[2] == "sum"]
    assert len(refused) == 1 and refused[0][0] == "dup"
    msg = refused[0][3]
    assert "'dup'" in msg and "another live process" in msg and "\n" not in msg
    assert sorted(m[0] for m in summed) == ["dup", "w0"]
    assert all(m[3] == (("dup", "w0"), [3.0, 3.0]) for m in summed)


@pytest.mark.timeout(30)
def test_an_unreachable_lighthouse_is_one_clear_line_within_the_connect_timeout():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(CommError) as info:
        TorchftMembership(addr, "w0", connect_timeout=1.0)
    assert time.monotonic() - t0 < 3.0
    assert str(info.value) == f"no resist lighthouse at {addr} (start one with `resist lighthouse`)"


@pytest.mark.timeout(30)
def test_a_quorum_that_cannot_form_in_time_is_one_line(lighthouse):
    addr = lighthouse(min_workers=2)
    m = TorchftMembership(addr, "alone")
    t0 = time.monotonic()
    with pytest.raises(CommError, match=r"^worker alone: no quorum within 1 s") as info:
        m.quorum({"step": 0}, timeout=1.0)
    assert time.monotonic() - t0 < 3.0 and "\n" not in str(info.value)
    m.leave()


@pytest.mark.timeout(30)
def test_a_lone_worker_has_a_one_member_quorum_and_its_verbs_are_local(lighthouse):
    """Also: successive quorums of unchanged members get distinct, increasing ids (the Lighthouse's own
    quorum id would repeat), and HOST:PORT names a lighthouse as well as its URL."""
    addr = lighthouse(min_workers=1)
    m = TorchftMembership("127.0.0.1:" + addr.rsplit(":", 1)[1], "solo")  # HOST:PORT works as well as a URL
    q1 = m.quorum({"step": 0}, timeout=10)
    c1 = m.communicator(q1, timeout=10)
    t = torch.ones(3)
    c1.all_reduce(t, average=True)
    assert t.tolist() == [1.0, 1.0, 1.0] and c1.all_gather(t)[0].tolist() == [1.0, 1.0, 1.0]
    q2 = m.quorum({"step": 1}, timeout=10)
    assert q2.members == ("solo",) and q2.id > q1.id and q2.data == ({"step": 1},)
    c2 = m.communicator(q2, timeout=10)
    c2.barrier()
    m.leave()



@pytest.mark.timeout(60)
def test_members_wait_for_a_live_member_that_computes_long_instead_of_dropping_it(lighthouse):
    """Quorums only (no process group), so the workers are threads of this process. The slow member
    computes 3 s, several heartbeat timeouts, between quorums: its heartbeats come from a thread, so
    it stays healthy, and the join timeout keeps the others from going on without it."""
    addr = lighthouse(min_workers=1)
    members = {w: TorchftMembership(addr, w) for w in ("a", "b", "slow")}  # all heartbeating
    out = {}

    def worker(wid):
        m = members[wid]
        first = m.quorum({"step": 0}, timeout=30)
        if wid == "slow":
            time.sleep(3.0)
        t0 = time.monotonic()
        second = m.quorum({"step": 1}, timeout=30)
        out[wid] = (first.members, second.members, time.monotonic() - t0)

    threads = [threading.Thread(target=worker, args=(w,)) for w in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    for m in members.values():
        m.leave()
    for wid, (first, second, waited) in out.items():
        assert first == second == ("a", "b", "slow"), wid
    assert out["a"][2] > 2.5 and out["b"][2] > 2.5
