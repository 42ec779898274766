"""The in-process runtime's timeout: a stall fails, peers that merely compute long do not."""

from __future__ import annotations

import threading
import time

import pytest

from resist.comm import CommError, run_in_process


def test_peers_computing_longer_than_the_timeout_in_total_is_not_a_stall():
    """Simulated workers take turns, so a rank waits for the sum of its peers' compute: 3 peers x 0.3 s
    per round exceed a 0.5 s timeout, yet nothing hangs."""

    def body(comm):
        for _ in range(3):
            time.sleep(0.3)  # compute, holding the device
            comm.barrier()
        return comm.rank

    assert run_in_process(4, body, timeout=0.5) == [0, 1, 2, 3]


def test_a_peer_stuck_past_the_timeout_still_fails():
    def body(comm):
        if comm.rank == 1:
            time.sleep(1.5)  # stuck while computing: no handoff for longer than the timeout
        comm.barrier()

    with pytest.raises(CommError, match="timed out"):
        run_in_process(3, body, timeout=0.4)



def test_a_peer_that_never_returns_fails_the_run_within_the_timeout():
    """The peers wait for the device itself with the timeout too, and the stuck rank is named (its
    thread is left behind, as the dist runtime leaves a stuck process to be killed)."""
    release = threading.Event()

    def body(comm):
        if comm.rank == 1:
            release.wait()  # stuck while computing, holding the device
        comm.barrier()

    t0 = time.monotonic()
    try:
        with pytest.raises(CommError, match=r"rank 1 did not finish or fail \(stuck\?\) while rank \d failed: "
                                            r"rank \d: timed out: rank 1 computed for 0.5 s"):
            run_in_process(3, body, timeout=0.5)
    finally:
        release.set()
    assert time.monotonic() - t0 < 10


def test_a_stuck_first_rank_is_found_by_peers_that_never_held_the_device():
    release = threading.Event()

    def body(comm):
        if comm.rank == 0:
            release.wait()  # before any collective: the peers are still waiting for their first turn
        comm.barrier()

    try:
        with pytest.raises(CommError, match="rank 0 did not finish or fail"):
            run_in_process(2, body, timeout=0.5)
    finally:
        release.set()
