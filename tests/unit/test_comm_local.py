"""The in-process runtime's timeout: a stall fails, peers that merely compute long do not."""

from __future__ import annotations

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

