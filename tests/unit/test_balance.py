"""Workers of different speeds (--balance, RESIST_FAULTS slow): the plan follows the measured speeds,
identically on every rank, and a resumed run replays the speeds from its metrics (docs/heterogeneous.md)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from resist.comm.local import LocalCommunicator, LocalGroup
from resist.presets import preset
from resist.data import load_dataset
from resist.faults import parse, slowdown
from resist.train import train
from resist.train.trainer import build_algorithm

DATA = load_dataset("synthetic", n_train=256, n_test=64, num_classes=4, size=12)


def tiny(tmp_path, **over):
    return preset("smoke").replace(**{
        "model.layers": (1, 1, 9, 1), "algo.workers": 4, "data.batch_size": 8, "algo.local_iters": 4,
        "optim.epochs": 4, "run.eval_every": 100, "run.out": str(tmp_path), "run.timeout": 120, **over})


def algorithm(cfg, rank=0):
    comm = LocalCommunicator(LocalGroup(cfg.algo.workers), rank)
    return build_algorithm(comm, cfg, 4, torch.device("cpu"), steps_per_epoch=8)


def rows_of(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_slow_fault_parses_and_refuses_bad_speeds():
    faults = parse("slow:rank=1:speed=0.5;slow:rank=1:round=3:speed=0.5")
    assert slowdown(faults, 1, 0, 0) == 2.0 and slowdown(faults, 1, 3, 0) == 4.0 and slowdown(faults, 0, 3, 0) == 1.0
    for bad in ("slow:rank=1", "slow:rank=1:speed=0", "slow:rank=1:speed=1.5"):
        with pytest.raises(ValueError, match="0 < V <= 1"):
            parse(bad)


@pytest.mark.parametrize("mode", ["depth", "steps", "depth+steps"])
def test_replayed_speeds_give_the_live_plans(tmp_path, mode):
    """The plan of every round is a pure function of (seed, round, the times recorded before it): a
    fresh algorithm that replays the first k rounds' rows plans round k as the live one did."""
    cfg = tiny(tmp_path, **{"algo.balance": mode})
    live = algorithm(cfg)
    live.set_costs(5.0, 1.0)
    rng = random.Random(0)
    rows, plans = [], []
    for r in range(8):
        plans.append(live.plan(r))
        steps = list(live.plan(r).steps or [4] * 4)
        seconds = [k * (1 + rng.random()) * (3 if w == 1 else 1) for w, k in enumerate(steps)]
        live.observe(r, seconds, steps)
        rows.append({"round": r, "compute_s_per_worker": seconds, "steps_per_worker": steps})
    assert any(p.assignments != plans[0].assignments for p in plans)
    assert [len(a) for a in plans[-1].assignments][1] == min(len(a) for a in plans[-1].assignments) or "depth" not in mode
    for k in range(1, 8):
        fresh = algorithm(cfg)
        fresh.set_costs(5.0, 1.0)
        fresh.replay(json.loads(json.dumps(rows[:k])))  # through JSON, as metrics.jsonl holds them
        assert fresh.plan(k) == plans[k]
        assert fresh.c == plans[k - 1].scale


def test_without_balance_the_plan_ignores_speeds(tmp_path):
    cfg = tiny(tmp_path)
    algo = algorithm(cfg)
    before = algo.plan(3)
    algo.observe(2, [1.0, 9.0, 1.0, 1.0], [4, 4, 4, 4])
    assert algo.speeds is None and algo.plan(3) == before and algo.local_steps(3) is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["depth", "steps"])
def test_a_slow_worker_gets_less_and_resume_replays(tmp_path, monkeypatch, one_thread, mode):
    """End to end: rank 1 at a quarter speed gets the fewest blocks (depth) or steps (steps) once it is
    measured; a run stopped and resumed continues with the plans its recorded times give."""
    monkeypatch.setenv("RESIST_FAULTS", "slow:rank=1:speed=0.25")
    cfg = tiny(tmp_path, **{"algo.balance": mode, "run.max_rounds": 4})
    train(cfg, DATA)
    train(cfg.replace(**{"run.max_rounds": None}), DATA, resume=True)
    rows = rows_of(tmp_path)
    assert [r["round"] for r in rows] == list(range(8))
    for row in rows[1:]:
        if mode == "depth":
            assert row["blocks_per_worker"][1] == min(row["blocks_per_worker"])
            assert row["blocks_per_worker"][1] < max(row["blocks_per_worker"])
        else:
            assert row["steps_per_worker"][1] < 4 and row["blocks_per_worker"] != [0] * 4
    for k in range(1, 8):  # the recorded plans are the replayed plans, before and after the resume
        fresh = algorithm(cfg)
        fresh.set_costs(*fresh_costs(cfg))
        fresh.replay(rows[:k])
        assert fresh.depths(k) == rows[k]["blocks_per_worker"]
        assert (fresh.local_steps(k) or 4) == rows[k]["steps_per_worker"][0]


def fresh_costs(cfg):
    from resist.models.protocol import step_costs
    from resist.train.trainer import model_builder

    builder = model_builder(cfg, 4)
    return step_costs(builder, torch.zeros(8, 3, 12, 12), builder().partitionable)


def test_balance_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="drop --balance"):
        preset("smoke").replace(**{"algo.name": "local_sgd", "algo.balance": "depth"})
    with pytest.raises(ValueError, match="unknown balance mode"):
        preset("smoke").replace(**{"algo.balance": "fast"})


@pytest.mark.timeout(300)
def test_gloo_ranks_agree_on_the_balanced_plans(tmp_path, monkeypatch, one_thread):
    """On real processes every rank plans from the same all-gathered times: were two ranks' plans to
    differ, their block exchange would not match and the run would fail within its timeout. The recorded
    plans are again the replay of the recorded times."""
    monkeypatch.setenv("RESIST_FAULTS", "slow:rank=1:speed=0.25")
    cfg = tiny(tmp_path, **{"algo.balance": "depth", "algo.workers": 3, "run.runtime": "dist", "run.max_rounds": 5})
    train(cfg, DATA)
    rows = rows_of(tmp_path)
    assert len(rows) == 5 and all(r["blocks_per_worker"][1] == min(r["blocks_per_worker"]) for r in rows[1:])
    for k in range(1, 5):
        fresh = algorithm(cfg)
        fresh.set_costs(*fresh_costs(cfg))
        fresh.replay(rows[:k])
        assert fresh.depths(k) == rows[k]["blocks_per_worker"]
