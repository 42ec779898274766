"""Streaming DiLoCo's overlap is real on torch.distributed: a fragment's all-reduce is started without
waiting (gloo runs it on its own threads), so a worker goes on computing while the transfer, or a late
peer, completes; it blocks only at the merge. (In-process the all-reduce runs at the merge instead,
with the same result: the numbers are tested in test_equivalence.py and tests/unit/test_streaming.py.)"""

from __future__ import annotations

import time

import pytest
import torch

from resist.comm import spawn
from resist.config import Config
from resist.presets import preset
from resist.train.trainer import build_algorithm

LATE_S = 1.5


def _send_then_merge(comm, cfg_dict):
    cfg = Config.from_dict(cfg_dict)
    algo = build_algorithm(comm, cfg, 4, torch.device("cpu"), 8)
    algo.start(0)
    algo.begin_round(0)
    if comm.rank == 1:
        time.sleep(LATE_S)  # the peer joins the all-reduce late
    t0 = time.perf_counter()
    algo._send(0)
    started_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    algo._merge(0)
    merged_s = time.perf_counter() - t1
    return started_s, merged_s, comm.bytes.sent["sync"]


@pytest.mark.timeout(120)
def test_a_fragment_send_does_not_wait_for_the_transfer_on_gloo():
    cfg = preset("smoke").replace(**{"algo.name": "streaming_diloco", "algo.workers": 2, "algo.local_iters": 4,
                                     "algo.fragments": 2, "algo.sync_delay": 1, "model.layers": (1, 1, 5, 1)})
    (start0, merge0, sent0), (_, _, sent1) = spawn(2, _send_then_merge, args=(cfg.to_dict(),), backend="gloo",
                                                     timeout=60)
    assert start0 < LATE_S / 3, start0  # rank 0's send returned long before its peer joined
    assert merge0 > LATE_S / 3, merge0  # and the merge is where it waited
    assert sent0 == sent1 > 0  # counted on 'sync' when started
