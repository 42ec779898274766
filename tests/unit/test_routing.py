"""The routing of a ResIST synchronization (paper §2.5, Fig. 3) as a pure function: no threads, no
communicator, no torch. Every rank's route is derived alone, so the cross-rank checks here are what
keeps the ranks' exchanges matched."""

from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resist.algorithms.routing import Average, Receive, holding, route
from resist.plan import make_plan


def routes(cur, nxt, world):
    return [route(cur, nxt, me, world) for me in range(world)]


def test_a_block_staying_with_its_sole_holder_moves_nothing():
    cur = nxt = {5: (1,), 6: (0,)}
    r = route(cur, nxt, 1, 2)
    assert r.sends == () and r.receives == () and r.averages == ()
    assert r.stepped == (5,) and r.reencoded == () and r.allocated == () and r.released == ()


def test_a_block_moving_goes_straight_into_its_new_holders_bucket():
    cur, nxt = {5: (0,)}, {5: (2,)}
    sender, bystander, receiver = routes(cur, nxt, 3)
    assert sender.sends == ((2, 5),) and sender.released == (5,) and sender.receives == ()
    assert receiver.receives == (Receive(0, 5, direct=True),) and receiver.allocated == (5,)
    assert receiver.averages == () and receiver.sends == ()
    assert bystander == route({}, {}, 1, 3)  # nothing at all


def test_a_sole_holder_that_keeps_a_block_and_shares_it_reencodes_its_own_copy():
    cur, nxt = {5: (1,)}, {5: (0, 1)}
    r = route(cur, nxt, 1, 3)
    assert r.sends == ((0, 5),) and r.reencoded == (5,) and r.receives == () and r.released == ()


def test_a_block_shared_by_several_holders_is_averaged_by_each_next_holder():
    cur, nxt = {7: (0, 2)}, {7: (1, 2)}
    r0, r1, r2 = routes(cur, nxt, 3)
    assert r0.sends == ((1, 7), (2, 7)) and r0.released == (7,) and r0.averages == ()
    assert r1.receives == (Receive(0, 7, False), Receive(2, 7, False)) and r1.allocated == (7,)
    assert r1.averages == (Average(7, (0, 2)),)
    # A holder that stays receives only the others' copies and averages them with its own.
    assert r2.sends == ((1, 7),) and r2.receives == (Receive(0, 7, False),)
    assert r2.averages == (Average(7, (0, 2)),) and r2.allocated == () and r2.released == ()


def test_blocks_everyone_holds_are_all_reduced_not_sent():
    cur, nxt = {3: (0, 1, 2), 4: (0, 1, 2)}, {3: (1,), 4: (0, 1, 2)}
    for me, r in enumerate(routes(cur, nxt, 3)):
        assert r.all_reduced == (3, 4) and r.sends == () and r.receives == () and r.stepped == ()
        assert r.released == ((3,) if me != 1 else ())


def test_min_depth_sharing_plan():
    """S=3 with m=3 of 4 blocks: every sub-ResNet holds three, so blocks are shared."""
    cands = (5, 6, 7, 8)
    cur, nxt = holding(make_plan(0, 0, 3, cands, 3)), holding(make_plan(0, 1, 3, cands, 3))
    assert any(len(h) > 1 for h in cur.values())
    for me, r in enumerate(routes(cur, nxt, 3)):
        mine_next = {b for b in cands if me in nxt[b]}
        combined = {a.block for a in r.averages} | {x.block for x in r.receives if x.direct}
        kept = {b for b in cands if cur[b] == (me,) and me in nxt[b]}
        assert mine_next == combined | kept | set(r.all_reduced) & mine_next
        for a in r.averages:
            assert a.holders == cur[a.block] and len(a.holders) > 1
            assert {x.src for x in r.receives if x.block == a.block} == set(a.holders) - {me}


def check_matched(cur, nxt, world):
    """Every rank's sends are exactly the others' receives, in the same order per pair of ranks (an
    exchange pairs messages between two ranks by their order)."""
    rs = routes(cur, nxt, world)
    sent, received = defaultdict(list), defaultdict(list)
    for me, r in enumerate(rs):
        for dst, b in r.sends:
            assert dst != me
            sent[me, dst].append(b)
        for x in r.receives:
            assert x.src != me
            received[x.src, me].append(x.block)
    assert sent == received
    for me, r in enumerate(rs):
        # Every next holder ends with the block; a rank releases exactly what it stops holding.
        assert set(r.released) == {b for b in cur if me in cur[b] and me not in nxt[b]}
        assert set(r.allocated) == {b for b in cur if me in nxt[b] and me not in cur[b]}
        assert set(r.stepped) == {b for b in cur if me in cur[b] and b not in r.all_reduced}
        assert not Counter(x.block for x in r.receives if x.direct) - Counter(set(r.allocated))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 1000), st.integers(1, 8), st.integers(1, 12), st.data())
def test_sends_match_receives_across_all_ranks(seed, rnd, world, p, data):
    cands = tuple(range(3, 3 + p))
    m = data.draw(st.integers(0 if p >= world else 1, p))
    cur, nxt = holding(make_plan(seed, rnd, world, cands, m)), holding(make_plan(seed, rnd + 1, world, cands, m))
    check_matched(cur, nxt, world)
    check_matched(cur, cur, world)  # a final round: averaged over its own holders only


@pytest.mark.parametrize("world", [1, 2, 4])
def test_into_and_out_of_a_whole_network_round(world):
    cands = tuple(range(3, 9))
    everyone = {b: tuple(range(world)) for b in cands}
    plan = holding(make_plan(1, 0, world, cands, 0))
    check_matched(everyone, plan, world)  # the warm-up's end
    check_matched(plan, everyone, world)  # the cool-down's start
