"""The projection's overlap model for data parallel (its gradient all-reduces run during backward)."""

import pytest

from resist.analysis import projection as pj


def test_data_parallel_link_time_hides_behind_backward_only():
    # 3 steps of 1 s compute each; 2 s of link time per step: forward (1/3 s) + the link (2 s) per step.
    assert pj.projected_round_s(3.0, 0.75e9, 0, 1.0, 0.0, overlap_steps=3) == pytest.approx(3 * (1 / 3 + 2))
    # A link faster than backward is hidden entirely: the step costs its compute.
    assert pj.projected_round_s(3.0, 0.0375e9, 0, 1.0, 0.0, overlap_steps=3) == pytest.approx(3.0)
    # Without overlap steps (ResIST, local SGD: one synchronization after the local steps) it is serial.
    assert pj.projected_round_s(3.0, 0.75e9, 0, 1.0, 0.0) == pytest.approx(9.0)


def test_project_run_overlaps_data_parallel_only():
    rows = [{"round": 0, "step": 4, "compute_s": 4.0, "time_s": 5.0, "sent_bytes": [1e9, 1e9], "recv_bytes": [1e9, 1e9],
             "messages": 8}]
    serial = pj.project_run(rows, "l", gbits=[1.0], latency_us=0, algo="local_sgd").projected_s[1.0]
    dp = pj.project_run(rows, "d", gbits=[1.0], latency_us=0, algo="data_parallel").projected_s[1.0]
    assert serial == pytest.approx(4.0 + 8.0)
    assert dp == pytest.approx(4 * (1 / 3 + 2.0))
