"""Overlapped ResIST's transfers are really non-blocking on torch.distributed: the exchange is posted
with ``batch_isend_irecv`` and the all-reduce started with ``async_op``, so ``end_round`` returns while
a late peer has not joined yet, and the wait comes at step tau of the next round; compressed, they run in
a thread of their own on the background group (``run_async``). (In-process they run
at the wait instead, with the same result: tests/distributed/test_equivalence.py, tests/unit/test_overlap.py.)"""

from __future__ import annotations

import time

import pytest
import torch

from resist.comm import spawn
from resist.config import Config
from resist.presets import preset
from resist.train.trainer import build_algorithm

LATE_S = 1.5


def _exchange(comm):
    peer = 1 - comm.rank
    if comm.rank == 1:
        time.sleep(LATE_S)  # the peer posts its messages late
    into = torch.zeros(1000)
    t0 = time.perf_counter()
    pending = comm.exchange_async([(peer, torch.full((1000,), float(comm.rank + 1)))], [(peer, into)])
    started_s, sent = time.perf_counter() - t0, comm.bytes.sent["sync"]
    t1 = time.perf_counter()
    pending.wait()
    return started_s, time.perf_counter() - t1, sent, into[0].item()


@pytest.mark.timeout(120)
def test_exchange_async_posts_without_waiting_on_gloo():
    (start0, wait0, sent0, got0), (_, _, sent1, got1) = spawn(2, _exchange, backend="gloo", timeout=60)
    assert start0 < LATE_S / 3, start0  # rank 0 posted and went on long before its peer joined
    assert wait0 > LATE_S / 3, wait0  # the wait is where it waited
    assert sent0 == sent1 == 4000  # counted when posted, as the blocking exchange counts
    assert (got0, got1) == (2.0, 1.0)


def _world_collectives_beside_a_pending_exchange(comm):
    peer, n = 1 - comm.rank, 4_000_000  # 16 MB: more than the sockets buffer, so the pair stays busy
    into = torch.zeros(n)
    pending = None
    if comm.rank == 0:  # rank 0's transfer is in flight; its peer posts only after two world collectives
        pending = comm.exchange_async([(peer, torch.full((n,), 1.0))], [(peer, into)])
    comm.barrier()
    got = [int(t) for t in comm.all_gather(torch.tensor([comm.rank]))]
    if comm.rank == 1:
        pending = comm.exchange_async([(peer, torch.full((n,), 2.0))], [(peer, into)])
    pending.wait()
    return got, into[0].item(), into[-1].item()


@pytest.mark.timeout(120)
def test_world_collectives_do_not_wait_for_a_background_transfer():
    """The round's bookkeeping (a barrier, a gather) runs and completes while a 16 MB transfer started
    without waiting is still pending on the background group, and the transfer then delivers. (That the
    background group is what lets a transfer overlap over a slow link is shown by the streaming suite's
    link runs, not here: on loopback gloo passes this on one group too.)"""
    (got0, *into0), (got1, *into1) = spawn(2, _world_collectives_beside_a_pending_exchange, backend="gloo",
                                           timeout=20)
    assert got0 == got1 == [0, 1]
    assert into0 == [2.0, 2.0] and into1 == [1.0, 1.0]


def _round_then_land(comm, cfg_dict):
    cfg = Config.from_dict(cfg_dict)
    algo = build_algorithm(comm, cfg, 4, torch.device("cpu"), 8)
    algo.start(0)
    algo.begin_round(0)
    if comm.rank == 1:
        time.sleep(LATE_S)  # the peer ends its round late
    t0 = time.perf_counter()
    algo.end_round(0)
    ended_s = time.perf_counter() - t0
    algo.begin_round(1)
    t1 = time.perf_counter()
    algo.after_step(1, 0)  # step tau = 1: the transfers land here
    landed_s = time.perf_counter() - t1
    return ended_s, landed_s, algo.inflight is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["none", "q8"])
def test_a_round_end_does_not_wait_for_the_transfers_on_gloo(codec):
    """Also compressed: the coded all-reduce and exchange run in a thread of their own (run_async)."""
    cfg = preset("smoke").replace(**{"algo.workers": 2, "algo.local_iters": 4, "algo.overlap": 1,
                                     "model.layers": (1, 1, 5, 1), "algo.compress": codec})
    (ended0, landed0, done0), (_, _, done1) = spawn(2, _round_then_land, args=(cfg.to_dict(),), backend="gloo",
                                                     timeout=60)
    assert ended0 < LATE_S / 3, ended0
    assert landed0 > LATE_S / 3, landed0
    assert done0 and done1


def _run_async_beside_world_collectives(comm):
    peer = 1 - comm.rank
    into = torch.zeros(1000)
    with comm.tag("background"):
        pending = comm.run_async(lambda: comm.exchange([(peer, torch.full((1000,), float(comm.rank + 1)))],
                                                       [(peer, into)]))
    with comm.tag("control"):
        got = [int(t) for t in comm.all_gather(torch.tensor([comm.rank]))]
    pending.wait()
    return got, into[0].item(), comm.bytes.sent["background"], comm.bytes.sent["sync"], comm.bytes.sent["control"]


@pytest.mark.timeout(120)
def test_run_async_delivers_beside_world_collectives_under_its_own_tag():
    """Work started by run_async (a thread on the background group) delivers while the caller runs a
    world collective, and counts its bytes under the tag it was started with. That it does not block the
    caller: test_a_round_end_does_not_wait_for_the_transfers_on_gloo[q8]."""
    (got0, into0, bg0, sync0, ctl0), (got1, into1, bg1, _, _) = spawn(2, _run_async_beside_world_collectives,
                                                                     backend="gloo", timeout=60)
    assert got0 == got1 == [0, 1]
    assert (into0, into1) == (2.0, 1.0)
    assert bg0 == bg1 == 4000 and sync0 == 0 and ctl0 == 8
