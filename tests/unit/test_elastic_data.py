"""Elastic batches (resist.data.elastic): over random membership histories no example is trained twice in
an epoch, none is skipped, a lost member's positions come back first, and a constant membership walks
the data like the non-elastic runs."""
import json
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resist.data import ImageArrays, steps_per_epoch, to_float
from resist.data.elastic import (DataCursor, ElasticBatches, commit, deal, examples_done, usable_positions)
from resist.data.sharding import epoch_permutation

# A history: the data's size and batch size, then rounds of (each member's local steps, whether the
# round kept its work); the member count changes freely between rounds.
rounds = st.lists(st.integers(1, 5).flatmap(
    lambda m: st.tuples(st.lists(st.integers(0, 4), min_size=m, max_size=m),
                        st.lists(st.booleans(), min_size=m, max_size=m))), min_size=1, max_size=25)
histories = st.integers(1, 8).flatmap(
    lambda b: st.tuples(st.integers(b, 12 * b), st.just(b), rounds))


def run(n, b, history):
    """Deal and commit every round; yields (cursor before, deal, kept, cursor after)."""
    cursor = DataCursor()
    for steps, kept in history:
        d = deal(cursor, n, b, steps)
        after = commit(cursor, d, kept, n, b)
        yield cursor, d, kept, after
        cursor = after


def trained(d, kept):
    """(epoch, position) of every example the round's kept work trained on."""
    return [(e, p) for i, k in enumerate(kept) if k for e, ps in d.batches(i) for p in ps]


@settings(max_examples=200, deadline=None)
@given(histories)
def test_no_position_twice_and_finished_epochs_are_complete(args):
    n, b, history = args
    usable = usable_positions(n, b)
    counts = Counter()
    for _, d, kept, after in run(n, b, history):
        for i in range(len(d.steps)):
            for e, ps in d.batches(i):
                assert len(ps) == b and all(0 <= p < usable for p in ps)  # the floor remainder is never dealt
        counts.update(trained(d, kept))
        assert max(counts.values(), default=1) == 1, "a position trained twice in an epoch"
        assert not after.used or after.used[0][0] > 0 or after.used[0][1] < usable, "an epoch all used"
        for e in range(after.epoch):  # every epoch the cursor left: each usable position exactly once
            assert {p for (ep, p) in counts if ep == e} == set(range(usable))
        # the cursor says exactly what was trained from its epoch on
        said = {(after.epoch + q // usable, q % usable) for a, z in after.used for q in range(a, z)}
        assert said == {k for k in counts if k[0] >= after.epoch}
        assert examples_done(after, n, b) == pytest.approx(len(counts) / usable)


@settings(max_examples=200, deadline=None)
@given(histories, st.lists(st.integers(0, 4), min_size=1, max_size=5))
def test_a_lost_members_positions_are_dealt_first_in_the_next_round(args, next_steps):
    n, b, history = args
    for _, d, kept, after in run(n, b, history):
        lost = [(e, p) for i, k in enumerate(kept) if not k for e, ps in d.batches(i) for p in ps]
        nxt = deal(after, n, b, next_steps)
        handed = [(e, p) for i in range(len(next_steps)) for e, ps in nxt.batches(i) for p in ps]
        # the lowest free positions: all the lost ones (in order) come before anything new
        assert sorted(handed[:len(lost)]) == sorted(lost[:len(handed)])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 8), st.integers(1, 3), st.integers(0, 7))
def test_constant_membership_walks_epochs_like_the_sharded_runs(w, s, b, m, rem):
    """W workers of s steps, no loss, W | n // B and s | steps_per_epoch: an epoch is exactly
    steps_per_epoch / s rounds and member i's batches are a contiguous range."""
    n = w * s * m * b + rem % b
    assert steps_per_epoch(n, w, b) == s * m
    history = [([s] * w, [True] * w)] * (2 * m + 1)
    for j, (before, d, _, after) in enumerate(run(n, b, history)):
        assert before.epoch == j // m  # m = steps_per_epoch / s rounds per epoch
        for i in range(w):
            first = ((j % m) * w + i) * s * b
            assert d.batches(i) == [(j // m, tuple(range(first + k * b, first + (k + 1) * b))) for k in range(s)]
        if (j + 1) % m == 0:
            assert after == DataCursor(j // m + 1, ())


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 8), st.integers(1, 300))
def test_constant_membership_is_contiguous_and_progress_linear_for_any_size(w, s, b, n):
    """Any n: rounds may straddle epochs, but each member's run is contiguous in the epochs laid end to
    end, and progress after k rounds is k * W * s * B / usable."""
    if n < b:
        return
    usable = usable_positions(n, b)
    for j, (_, d, _, after) in enumerate(run(n, b, [([s] * w, [True] * w)] * 12)):
        for i in range(w):
            stream = [e * usable + p for e, ps in d.batches(i) for p in ps]
            assert stream == list(range(stream[0], stream[0] + s * b))
        assert examples_done(after, n, b) == pytest.approx((j + 1) * w * s * b / usable)


def test_a_straddling_round_that_loses_the_old_epochs_positions_keeps_both_epochs():
    n, b = 11, 2  # usable 10: position 10 is the dropped remainder
    c = DataCursor(0, ((0, 8),))
    d = deal(c, n, b, [1, 1])
    assert d.batches(0) == [(0, (8, 9))] and d.batches(1) == [(1, (0, 1))]
    c = commit(c, d, [False, True], n, b)
    assert c == DataCursor(0, ((0, 8), (10, 12)))  # epoch 0's hole, and epoch 1's first batch
    assert examples_done(c, n, b) == 1.0
    d = deal(c, n, b, [2])
    assert d.batches(0) == [(0, (8, 9)), (1, (2, 3))]
    assert commit(c, d, [True], n, b) == DataCursor(1, ((0, 4),))


def test_holes_give_non_contiguous_batches():
    c = commit(DataCursor(), deal(DataCursor(), 20, 4, [1, 1, 1]), [True, False, True], 20, 4)
    c = commit(c, deal(c, 20, 4, [1, 1]), [False, True], 20, 4)  # the hole 4..8 dealt and lost again
    assert c == DataCursor(0, ((0, 4), (8, 16)))
    c2 = commit(c, deal(c, 20, 4, [1]), [True], 20, 4)
    assert c2 == DataCursor(0, ((0, 16),))
    c = DataCursor(0, ((0, 2), (4, 6), (8, 12)))  # a restored cursor with two-position holes
    assert deal(c, 20, 2, [2]).batches(0) == [(0, (2, 3)), (0, (6, 7))]
    assert deal(c, 20, 4, [1]).batches(0) == [(0, (2, 3, 6, 7))]


def test_misuse_raises():
    c = DataCursor()
    d = deal(c, 20, 4, [1, 2])
    with pytest.raises(ValueError, match="not dealt from this cursor"):
        commit(DataCursor(1), d, [True, True], 20, 4)
    with pytest.raises(ValueError, match="not dealt from this cursor"):
        commit(c, d, [True, True], 24, 4)
    with pytest.raises(ValueError, match="kept has 1 entries"):
        commit(c, d, [True], 20, 4)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        deal(c, 20, 4, [1, -1])
    with pytest.raises(ValueError, match="smaller than one batch"):
        deal(c, 3, 4, [1])
    with pytest.raises(IndexError):
        d.batch(0, 1)
    with pytest.raises(ValueError, match="sorted, merged"):
        DataCursor(0, ((0, 4), (4, 8)))
    with pytest.raises(ValueError, match="epoch must be"):
        DataCursor(-1)


@settings(max_examples=100, deadline=None)
@given(histories)
def test_cursor_round_trips_through_json(args):
    n, b, history = args
    for _, _, _, after in run(n, b, history):
        back = DataCursor.from_dict(json.loads(json.dumps(after.to_dict())))
        assert back == after and deal(back, n, b, [2, 1]) == deal(after, n, b, [2, 1])


# ------------------------------------------------------------------------------------------ batches

def arrays(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8)
    return ImageArrays(x, torch.arange(n))  # label = index: a batch's labels name its examples


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 5), st.lists(st.integers(0, 49), min_size=1, max_size=8, unique=True))
def test_same_positions_give_the_same_batch_whoever_trains_them(epoch, positions):
    a = ElasticBatches(arrays(), MEAN, STD, seed=7)
    other = ElasticBatches(arrays(), MEAN, STD, seed=7)
    other.batch_at(epoch + 1, [0])  # another history of calls and cache contents
    xa, ya = a.batch_at(epoch, positions)
    xb, yb = other.batch_at(epoch, positions)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert ya.tolist() == epoch_permutation(50, 7, epoch)[positions].tolist()
    assert xa.shape == (len(positions), 3, 8, 8) and xa.dtype == torch.float32


def test_without_augmentation_a_batch_is_the_normalized_images_of_the_permutation():
    data = arrays()
    plain = ElasticBatches(data, MEAN, STD, seed=3, augment=False)
    x, y = plain.batch_at(2, [4, 9, 10, 11])
    idx = epoch_permutation(50, 3, 2)[[4, 9, 10, 11]]
    assert torch.equal(y, idx) and torch.equal(x, to_float(data.x[idx], MEAN, STD))
    aug = ElasticBatches(data, MEAN, STD, seed=3)
    assert not torch.equal(aug.batch_at(2, [4, 9, 10, 11])[0], x)  # augmentation does something
    # a batch dealt elsewhere in the epoch is augmented with another generator
    assert not torch.equal(aug.batch_at(2, [5, 9, 10, 11])[0][1:], aug.batch_at(2, [4, 9, 10, 11])[0][1:])


def test_the_permutation_cache_keeps_the_two_latest_epochs():
    b = ElasticBatches(arrays(), MEAN, STD, seed=1)
    for e in (0, 1, 2, 1):
        b.batch_at(e, [0, 1])
    assert sorted(b._perms) == [1, 2]
    assert torch.equal(b.permutation(0), epoch_permutation(50, 1, 0))
