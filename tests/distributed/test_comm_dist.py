"""The torch.distributed runtime (gloo, local processes) against the in-process one.

Every verb must give the same result and the same per-rank byte counts in both runtimes, and every kind
of failure (a rank raises, dies, or hangs) must reach the parent as a CommError naming that rank.
Worker functions are module-level: ``spawn`` pickles them by reference.
"""

import os
import signal
import time

import pytest
import torch

from resist.comm import CommError, find_free_port, run_from_env, run_in_process, spawn


def _both(world_size, fn, *args):
    """Results of ``fn(comm, *args)`` under both runtimes; the spawn one uses gloo."""
    local = run_in_process(world_size, lambda comm: fn(comm, *args), timeout=60)
    procs = spawn(world_size, fn, args=args, backend="gloo", timeout=60)
    return local, procs


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


# --- workers ---------------------------------------------------------------------------------------
def _all_verbs(comm, root):
    r, w = comm.rank, comm.world_size
    out = {}
    # Small integers in float32: sums are exact whatever order the backend adds in.
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (r + 1)
    comm.all_reduce(t)
    out["sum"] = t
    t = torch.full((5,), float(r + 1))
    comm.all_reduce(t, average=True)
    out["avg"] = t
    t = torch.tensor([r * 10**12 + 7, -3 * r, 5], dtype=torch.int64)
    comm.all_reduce(t)
    out["sum_i64"] = t
    t = torch.tensor([r * 10**12 + 7, 3 * r + 1], dtype=torch.int64)
    comm.all_reduce(t, average=True)
    out["avg_i64"] = t
    t = torch.full((4,), float(r)) if r == root else torch.zeros(4)
    comm.broadcast(t, src=root)
    out["bcast"] = t
    out["gather"] = comm.all_gather(torch.tensor([r, r * r], dtype=torch.int32))
    if w > 1:  # a rank never sends to itself
        buf = torch.empty(3, dtype=torch.float64)
        comm.exchange([((r + 1) % w, torch.full((3,), r + 0.5, dtype=torch.float64))], [((r - 1) % w, buf)])
        out["ring"] = buf
    with comm.tag("eval"):
        t = torch.ones(7, dtype=torch.float16)
        comm.all_reduce(t)
        out["eval"] = t
    comm.barrier()
    return out, comm.bytes.snapshot()


def _exchange_patterns(comm):
    """Ranks 0 and 1 swap several messages both ways; rank 2 takes part with empty lists."""
    r = comm.rank
    if r == 2:
        comm.exchange([], [])
        return [], comm.bytes.snapshot()
    peer = 1 - r
    sends = [(peer, torch.full((k + 1,), float(10 * r + k))) for k in range(3)]
    recvs = [(peer, torch.empty(k + 1)) for k in range(3)]
    comm.exchange(sends, recvs)
    # One-directional: rank 0 only sends, rank 1 only receives.
    if r == 0:
        comm.exchange([(1, torch.tensor([1, 2, 3]))], [])
        got = None
    else:
        got = torch.empty(3, dtype=torch.int64)
        comm.exchange([], [(0, got)])
    return [b for _, b in recvs] + [got], comm.bytes.snapshot()


def _raises(comm):
    comm.all_reduce(torch.ones(2))
    if comm.rank == 1:
        raise ValueError("boom from one")
    comm.all_reduce(torch.ones(2))


def _killed(comm):
    comm.all_reduce(torch.ones(2))
    if comm.rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    comm.all_reduce(torch.ones(2))


def _world_of_one(comm, value):
    t = torch.tensor([value])
    comm.all_reduce(t)
    return comm.rank, comm.world_size, t.item()


def _hangs(comm):
    comm.all_reduce(torch.ones(2))
    if comm.rank == 1:
        time.sleep(10**6)
    comm.all_reduce(torch.ones(2))


# --- equivalence ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_verbs_match_in_process(world_size):
    local, procs = _both(world_size, _all_verbs, world_size - 1)
    _assert_same(local, procs)
    (first, counts) = procs[0]
    assert torch.equal(first["sum"], torch.arange(6.0).reshape(2, 3) * sum(range(1, world_size + 1)))
    assert torch.equal(first["bcast"], torch.full((4,), float(world_size - 1)))
    assert counts["sent"]["eval"] == round(2 * (world_size - 1) / world_size * 14)


@pytest.mark.timeout(120)
def test_exchange_patterns_match_in_process():
    local, procs = _both(3, _exchange_patterns)
    _assert_same(local, procs)
    received, _ = procs[1]
    assert [t.tolist() for t in received[:3]] == [[0.0], [1.0, 1.0], [2.0, 2.0, 2.0]]
    assert received[3].tolist() == [1, 2, 3]
    assert procs[2][1] == {"sent": {"sync": 0}, "received": {"sync": 0}}


# --- failures ------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_rank_that_raises_is_named():
    with pytest.raises(CommError) as info:
        spawn(3, _raises, backend="gloo", timeout=30)
    # One line; the child's traceback travels as a note.
    assert str(info.value) == "rank 1 raised ValueError: boom from one"
    assert 'raise ValueError("boom from one")' in "".join(getattr(info.value, "__notes__", []))


@pytest.mark.timeout(120)
def test_rank_killed_by_signal_is_named_quickly():
    start = time.monotonic()
    with pytest.raises(CommError) as info:
        spawn(3, _killed, backend="gloo", timeout=60)
    assert str(info.value) == "rank 2 died (exit code -9 / signal SIGKILL)"
    assert time.monotonic() - start < 30  # start-up included; far below the 60 s collective timeout


@pytest.mark.timeout(120)
def test_stuck_rank_is_named_after_timeout():
    start = time.monotonic()
    with pytest.raises(CommError, match=r"^rank 1 did not finish") as info:
        spawn(2, _hangs, backend="gloo", timeout=5)
    assert "rank 0 failed" in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - start < 60


# --- arguments -----------------------------------------------------------------------------------
def test_run_from_env_needs_the_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        run_from_env(_raises)
    for var, value in dict(RANK="2", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29500").items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match="RANK=2"):
        run_from_env(_raises)


@pytest.mark.timeout(60)
def test_run_from_env_joins_the_world_it_describes(monkeypatch):
    for var, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(find_free_port())).items():
        monkeypatch.setenv(var, value)
    assert run_from_env(_world_of_one, args=(5,), backend="gloo", timeout=30) == (0, 1, 5)


def test_backend_is_checked():
    with pytest.raises(ValueError, match="backend must be one of gloo, nccl, got 'mpi'"):
        spawn(2, _raises, backend="mpi")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            spawn(2, _raises, backend="nccl")


def _busy_then_reduce(comm, busy_s):
    # Rank 1 holds the device for busy_s before each collective; rank 0 only waits for it.
    for _ in range(2):
        if comm.rank == 1:
            time.sleep(busy_s)
        comm.all_reduce(torch.ones(3))
    comm.exchange([(1 - comm.rank, torch.ones(2))], [(1 - comm.rank, torch.empty(2))])
    return comm.idle_s


def test_in_process_idle_time_is_the_wait_for_peers():
    """Parallel-equivalent time subtracts idle_s: a rank that waits in a collective while a simulated
    peer computes must see that wait as idle, or data parallel would be charged its peers' compute."""
    idle = run_in_process(2, lambda comm: _busy_then_reduce(comm, 0.2), timeout=60)
    assert idle[0] >= 0.35  # two waits of 0.2 s for rank 1
    assert idle[1] < idle[0] - 0.3
    procs = spawn(2, _busy_then_reduce, args=(0.05,), backend="gloo", timeout=60)
    assert procs == [0.0, 0.0]  # real processes run side by side: nothing to subtract


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.timeout(120)
def test_verbs_match_in_process_on_nccl():
    """NCCL takes one GPU per rank: the verbs on as many ranks as there are GPUs (at most 4)."""
    world_size = min(torch.cuda.device_count(), 4)
    local = run_in_process(world_size, lambda comm: _all_verbs(comm, world_size - 1), timeout=60)
    procs = spawn(world_size, _all_verbs, args=(world_size - 1,), backend="nccl", timeout=60)
    _assert_same(local, procs)
