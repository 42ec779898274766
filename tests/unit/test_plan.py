"""Properties of the sub-ResNet plan (paper §2.2, §2.6); no torch needed."""

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resist.plan import candidate_blocks, eval_scale, make_plan

plans = st.integers(1, 60).flatmap(
    lambda p: st.tuples(
        st.integers(0, 2**31 - 1),  # seed
        st.integers(0, 10_000),  # round
        st.integers(1, 12),  # workers
        st.just(tuple(range(5, 5 + p))),  # candidate block indices
        st.integers(0, p),  # min depth
    )
)


@settings(max_examples=300, deadline=None)
@given(plans)
def test_every_block_held_and_min_depth_met(args):
    seed, rnd, s, cands, m = args
    plan = make_plan(seed, rnd, s, cands, m)
    assert len(plan.assignments) == s
    held = set().union(*map(set, plan.assignments))
    assert held == set(cands)
    for a in plan.assignments:
        assert len(set(a)) == len(a), "a sub-ResNet holds a block twice"
        assert len(a) >= min(m, len(cands))
        assert set(a) <= set(cands)


@settings(max_examples=300, deadline=None)
@given(plans)
def test_without_min_depth_sizes_balanced_and_disjoint(args):
    seed, rnd, s, cands, _ = args
    plan = make_plan(seed, rnd, s, cands, 0)
    sizes = [len(a) for a in plan.assignments]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(cands)
    assert plan.scale == pytest.approx(1 / s)


@settings(max_examples=100, deadline=None)
@given(plans)
def test_deterministic_and_rounds_differ(args):
    seed, rnd, s, cands, m = args
    assert make_plan(seed, rnd, s, cands, m) == make_plan(seed, rnd, s, cands, m)
    if len(cands) >= 4 and 2 <= s < len(cands) and m * s <= len(cands):
        rounds = {make_plan(seed, rnd + k, s, cands, m).assignments for k in range(10)}
        assert len(rounds) > 1


def test_plan_imports_no_torch():
    import subprocess

    code = "import sys, resist.plan; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paper_resnet101_min_depth_sharing():
    cands = tuple(range(8, 30))  # 22 partitionable blocks
    plan = make_plan(0, 0, 8, cands, 4)
    assert all(len(a) == 4 for a in plan.assignments)
    assert sum(len(plan.holders(b)) for b in cands) == 32  # 10 blocks shared twice
    assert plan.scale == pytest.approx(4 / 22)
    assert eval_scale(2, 22, 4) == pytest.approx(0.5)


def test_round_robin_one_worker_holds_all():
    plan = make_plan(3, 7, 1, range(10))
    assert plan.assignments == (tuple(range(10)),)
    assert plan.scale == 1.0 and plan.skipped(0) == frozenset()


def test_candidate_modes_and_errors():
    assert candidate_blocks((5, 6), (1, 2, 5, 6), "section3") == (5, 6)
    assert candidate_blocks((5, 6), (1, 2, 5, 6), "naive") == (1, 2, 5, 6)
    with pytest.raises(ValueError, match="unknown partition mode"):
        candidate_blocks((), (), "bogus")
    with pytest.raises(ValueError, match="min depth 5 exceeds the 4"):
        make_plan(0, 0, 2, range(4), 5)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        make_plan(0, 0, 0, range(4))


# --- speed-balanced plans (--balance; docs/heterogeneous.md) ---

from resist.plan import (BALANCE_MODES, block_counts, deal, make_balanced_plan, relative_speeds,  # noqa: E402
                         update_speeds)

balanced = st.integers(1, 40).flatmap(
    lambda p: st.tuples(
        st.integers(0, 2**31 - 1),  # seed
        st.integers(0, 10_000),  # round
        st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=8),  # speeds
        st.just(tuple(range(3, 3 + p))),  # candidates
        st.integers(0, p),  # min depth
        st.sampled_from(BALANCE_MODES[1:]),
    )
)


@settings(max_examples=300, deadline=None)
@given(balanced)
def test_balanced_plan_holds_every_block_and_min_depth(args):
    seed, rnd, speeds, cands, m, mode = args
    plan = make_balanced_plan(seed, rnd, speeds, cands, m, 3.0, 1.0, 20, mode)
    assert len(plan.assignments) == len(speeds)
    assert set().union(*map(set, plan.assignments)) == set(cands)
    for a in plan.assignments:
        assert len(set(a)) == len(a) >= m
    if "steps" in mode:
        assert len(plan.steps) == len(speeds) and all(1 <= k <= 20 for k in plan.steps)
        assert plan.steps[speeds.index(max(speeds))] == 20  # the fastest worker never waits
    else:
        assert plan.steps is None
    assert make_balanced_plan(seed, rnd, speeds, cands, m, 3.0, 1.0, 20, mode) == plan  # pure


@settings(max_examples=200, deadline=None)
@given(plans, st.sampled_from(BALANCE_MODES[1:]))
def test_equal_speeds_give_the_plain_plan(args, mode):
    """With every worker as fast, a balanced plan is today's plan: same blocks, same scale, every
    worker its local_iters (steps, where the mode sets them)."""
    seed, rnd, s, cands, m = args
    plain = make_plan(seed, rnd, s, cands, m)
    plan = make_balanced_plan(seed, rnd, [1.0] * s, cands, m, 2.0, 1.0, 25, mode)
    assert plan.assignments == plain.assignments
    assert plan.scale == plain.scale  # bitwise: the whole-network evaluation is unchanged
    assert plan.steps in (None, (25,) * s)


def test_slower_worker_gets_fewer_blocks_and_the_longest_step_shrinks():
    cands = tuple(range(22))
    counts = block_counts([1.0, 0.5, 1.0, 1.0], shared_cost=0.38, block_cost=0.62 / 22, num_candidates=22)
    assert counts == (7, 1, 7, 7)  # one block at least: a sub-network without blocks is refused elsewhere
    times = [(0.38 + n * 0.62 / 22) / v for n, v in zip(counts, [1.0, 0.5, 1.0, 1.0])]
    plain = [(0.38 + n * 0.62 / 22) / v for n, v in zip((6, 6, 5, 5), [1.0, 0.5, 1.0, 1.0])]
    assert max(times) < 0.75 * max(plain)
    # Every assignment of counts is optimal: moving one block from any worker to any other never helps.
    for a in range(4):
        for b in range(4):
            if a != b and counts[a] > 1:
                moved = list(counts)
                moved[a] -= 1
                moved[b] += 1
                t = [(0.38 + n * 0.62 / 22) / v for n, v in zip(moved, [1.0, 0.5, 1.0, 1.0])]
                assert max(t) >= max(times)
    plan = make_balanced_plan(0, 0, [1.0, 0.5, 1.0, 1.0], cands, 0, 0.38, 0.62 / 22, 25, "depth")
    assert [len(a) for a in plan.assignments] == list(counts)
    assert plan.scale == pytest.approx(0.25)  # every block still dealt once: c = P / (S P)


def test_steps_even_out_the_round_and_the_scale_weights_steps():
    cands = tuple(range(8))
    plan = make_balanced_plan(1, 2, [1.0, 0.5], cands, 0, 1.0, 1.0, 20, "steps")
    assert plan.steps == (20, 10)
    sizes = [len(a) for a in plan.assignments]
    assert plan.scale == pytest.approx((20 * sizes[0] + 10 * sizes[1]) / (8 * 30))
    both = make_balanced_plan(1, 2, [1.0, 0.5], cands, 0, 1.0, 1.0, 20, "depth+steps")
    assert [len(a) for a in both.assignments] == [6, 2]
    assert both.steps == (20, 20)  # depth alone evened it out: (1 + 2) / 0.5 < 1 + 6
    both = make_balanced_plan(1, 2, [1.0, 0.25], cands, 0, 1.0, 1.0, 20, "depth+steps")
    work = [1.0 + len(a) for a in both.assignments]
    assert [len(a) for a in both.assignments] == [7, 1]  # (1 + 1) / 0.25 = 8 = 1 + 7: the shared layers dominate
    assert both.steps == (20, round(20 * max(work) * 0.25 / work[1]))


def test_no_sub_network_is_left_without_a_block():
    """As many blocks as workers or more: the slowest worker keeps one (else it trains the stem and head
    alone); fewer blocks than workers (only with a min depth): the floor is the min depth."""
    assert block_counts([1.0, 0.01, 1.0], 10.0, 1.0, 6) == (3, 1, 2)
    assert block_counts([1.0, 0.01, 1.0, 1.0], 10.0, 1.0, 3, min_depth=1) == (1, 1, 1, 1)


def test_min_depth_is_kept_by_balance():
    plan = make_balanced_plan(3, 4, [1.0, 0.25, 1.0], tuple(range(6)), 2, 5.0, 1.0, 10, "depth")
    assert min(len(a) for a in plan.assignments) >= 2
    assert len(plan.assignments[1]) == 2


def test_deal_is_round_robin_with_round_robin_sizes():
    perm = [5, 3, 9, 1, 7, 2, 8]
    assert deal(perm, [3, 2, 2]) == [perm[0::3], perm[1::3], perm[2::3]]
    assert deal(perm, [1, 0, 6]) == [[5], [], [3, 9, 1, 7, 2, 8]]


def test_speeds_moving_average_and_rounding():
    s = update_speeds(None, [10.0, 10.0], [1.0, 2.0])
    assert s == (10.0, 5.0)
    s = update_speeds(s, [10.0, 10.0], [1.0, 1.0])
    assert s == (10.0, 7.5)
    assert relative_speeds([10.0, 4.8, 9.96]) == (1.0, 0.48, 1.0)
    assert relative_speeds([1.0, 0.0]) == (1.0, 0.01)


def test_balanced_plan_refuses_bad_input():
    with pytest.raises(ValueError, match="balance mode"):
        make_balanced_plan(0, 0, [1.0], (1, 2), 0, 1.0, 1.0, 5, "fast")
    with pytest.raises(ValueError, match="speeds"):
        make_balanced_plan(0, 0, [1.0, float("nan")], (1, 2), 0, 1.0, 1.0, 5, "depth")
