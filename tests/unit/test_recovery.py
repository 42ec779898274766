"""The elastic recovery rule (resist.algorithms.recovery): pure functions, checked on their own."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resist.algorithms.recovery import Refused, Report, Split, Unrecoverable, decide, keepers
from resist.algorithms.routing import holding
from resist.plan import make_plan

BLOCKS = (3, 4, 5, 6, 7, 8)


def trained(token, round_, holds, keeps=(), members=("a", "b", "c"), digest="d"):
    return Report(token, digest, round_, tuple(holds), tuple(keeps), {"epoch": 0, "used": []}, members,
                  {"loss": 1.0, "compute_s": 1.0})


def test_everyone_fresh_starts_the_run():
    d = decide(("a", "b"), [Report("1", "d"), Report("2", "d")], BLOCKS)
    assert d.start and d.members == ("a", "b")


def test_no_change_keeps_every_contribution():
    reps = [trained("1", 4, (3, 4)), trained("2", 4, (5, 6)), trained("3", 4, (7, 8))]
    d = decide(("a", "b", "c"), reps, BLOCKS)
    assert not d.start and d.round == 4 and d.lost == () and d.joiners == () and d.restored == {}
    assert d.cur == {3: (0,), 4: (0,), 5: (1,), 6: (1,), 7: (2,), 8: (2,)}
    assert d.contributors == (0, 1, 2)


def test_a_lost_workers_blocks_come_from_their_keepers():
    # b is gone; its blocks 5 and 6 were kept by a (5) and c (6) at the last synchronization.
    reps = [trained("1", 4, (3, 4), keeps=(5,)), trained("3", 4, (7, 8), keeps=(6,))]
    d = decide(("a", "c"), reps, BLOCKS)
    assert d.lost == ("b",)
    assert d.restored == {5: 0, 6: 1}
    assert d.cur[5] == (0,) and d.cur[6] == (1,) and d.cur[7] == (1,)
    assert d.contributors == (0, 1)


def test_a_block_shared_with_a_survivor_keeps_the_survivors_copy():
    reps = [trained("1", 2, (3, 4, 5)), trained("3", 2, (5, 6, 7, 8))]  # b (lost) also held 5
    d = decide(("a", "c"), reps, BLOCKS)
    assert d.cur[5] == (0, 1) and 5 not in d.restored


def test_a_restarted_worker_is_lost_and_joins():
    reps = [trained("1", 4, (3, 4, 5, 6)), Report("new", "d"), trained("3", 4, (7, 8))]
    d = decide(("a", "b", "c"), reps, BLOCKS)
    assert d.lost == ("b",) and d.joiners == (1,) and d.contributors == (0, 2)


def test_a_block_without_holder_or_keeper_is_unrecoverable():
    reps = [trained("1", 4, (3, 4)), trained("3", 4, (7, 8))]
    with pytest.raises(Unrecoverable, match="block 5"):
        decide(("a", "c"), reps, BLOCKS)


def test_another_config_is_refused_not_averaged_in():
    reps = [trained("1", 4, BLOCKS), Report("2", "other")]
    with pytest.raises(Refused, match="worker b"):
        decide(("a", "b"), reps, BLOCKS)


def test_a_fresh_start_refuses_the_minority_config_whatever_its_rank():
    # the odd worker may be the first to ask (rank 0): the majority, not the rank, sets the reference
    reps = [Report("1", "other"), Report("2", "cfg"), Report("3", "cfg")]
    with pytest.raises(Refused, match="worker a runs another config"):
        decide(("a", "b", "c"), reps, BLOCKS)


def test_a_fresh_start_split_evenly_refuses_no_one_yet():
    with pytest.raises(Split, match="none is a majority"):
        decide(("b", "c"), [Report("1", "other"), Report("2", "cfg")], BLOCKS)
    assert decide(("a",), [Report("1", "cfg")], BLOCKS).start


def test_members_at_different_rounds_are_unrecoverable():
    reps = [trained("1", 4, BLOCKS[:3]), trained("2", 5, BLOCKS[3:])]
    with pytest.raises(Unrecoverable, match="different rounds"):
        decide(("a", "b"), reps, BLOCKS)


def test_report_round_trips_through_json():
    import json

    rep = trained("1", 7, (3, 5), keeps=(8,))
    assert Report.from_dict(json.loads(json.dumps(rep.to_dict()))) == rep


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), round_=st.integers(0, 50), world=st.integers(2, 5), lost=st.integers(0, 4))
def test_after_any_single_loss_every_block_has_a_source(seed, round_, world, lost):
    """keepers() after a synchronization, then decide() after any one worker of the next round is lost:
    every block is recovered (from a survivor's copy or a keeper), none is unrecoverable."""
    lost %= world
    cands = tuple(range(2, 2 + 8))
    cur = holding(make_plan(seed, round_, world, cands, 1))
    nxt = holding(make_plan(seed, round_ + 1, world, cands, 1))
    kept, backups = keepers(cur, nxt, world)
    keeps = {r: set() for r in range(world)}
    for b, k in kept.items():
        keeps[k].add(b)
        assert k not in nxt[b] and cur[b] == (k,)  # what it sent and released
    for b, (h, dst) in backups.items():
        keeps[dst].add(b)
        assert nxt[b] == (h,) and dst != h
    names = tuple(f"w{r}" for r in range(world))
    reps = [trained(str(r), round_ + 1, [b for b in cands if r in nxt[b]], sorted(keeps[r]), names)
            for r in range(world) if r != lost]
    d = decide(tuple(n for r, n in enumerate(names) if r != lost), reps, cands)
    assert d.lost == (names[lost],)
    for b in cands:
        assert d.cur[b], b
        if set(nxt[b]) == {lost}:
            assert b in d.restored
