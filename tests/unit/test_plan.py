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
