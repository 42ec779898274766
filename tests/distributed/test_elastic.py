"""Elastic training on torchft (Lighthouse quorums, reconfigured gloo groups) with real processes killed
and started mid-run: the run goes on, and its final model equals the in-process twin's that replays the
same membership history (the recovery rule itself is checked against a hand-computed reference in
tests/unit/test_elastic_sync.py).

Which round a joiner enters depends on timing (how fast its process starts), so each test reads the
history the real run went through from its metrics.jsonl and replays exactly that in-process. Equality
is bitwise with two workers (a sum of two has one order); with three, gloo's ring sums in another order
than rank order, so the models agree to float32's last bits (1e-5 here, after ten rounds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchft")

from resist.presets import preset  # noqa: E402
from resist.train.elastic import run_elastic_in_process  # noqa: E402
from resist.train.elastic_launch import ElasticLauncher  # noqa: E402
from resist.train.trainer import load_data  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def config(workers: int, algo: str = "resist", **over):
    return preset("smoke").replace(**{"run.runtime": "elastic", "algo.workers": workers, "algo.name": algo,
                                      "optim.epochs": 2, "algo.local_iters": 3, "run.eval_every": 4, **over})


def rows_of(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def history(rows: list[dict]) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """The kills and joins that replay a run's membership events in-process: a worker lost in round r
    dies during r's local steps (its work is lost however far it got), a joiner of round r starts during
    them."""
    kills, joins = {}, {}
    for row in rows:
        for e in row["events"]:
            if e["event"] == "lost":
                kills[e["worker"]] = (e["round"], 0)
            elif e["event"] == "joined":
                joins[e["worker"]] = e["round"]
    return kills, joins


def launch(cfg, out: Path, start=None, env: dict | None = None, timeout: float = 180):
    """A real elastic run (a lighthouse and one process per worker); ``start(launcher)`` is called every
    0.05 s while it runs (to start joiners)."""
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    launcher = ElasticLauncher(cfg, out)
    try:
        for i in range(cfg.algo.workers):
            launcher.start(f"w{i}")
        deadline = time.monotonic() + timeout
        while launcher.alive() and time.monotonic() < deadline:
            if start is not None:
                start(launcher)
            time.sleep(0.05)
        return launcher.wait(timeout=5)
    finally:
        launcher.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def same_model(a: Path, b: Path, atol: float) -> None:
    x, y = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert x.keys() == y.keys()
    for k in x:
        if atol == 0:
            assert torch.equal(x[k], y[k]), k
        else:
            assert torch.allclose(x[k].double(), y[k].double(), atol=atol), (k, (x[k] - y[k]).abs().max())


def replay(cfg, real: Path, twin: Path) -> list[dict]:
    rows = rows_of(real)
    kills, joins = history(rows)
    twin.mkdir()
    run_elastic_in_process(cfg, load_data(cfg), twin, kills=kills, joins=joins, timeout=120)
    assert [r["members"] for r in rows_of(twin)] == [r["members"] for r in rows]
    return rows


@pytest.mark.parametrize("workers,atol", [(2, 0.0), (3, 1e-5)])
def test_a_worker_killed_mid_round_the_others_finish(tmp_path, workers, atol):
    cfg = config(workers)
    # Rank 1 SIGKILLs itself at its second local step of round 2: what it trained in round 2 is lost.
    summary = launch(cfg, tmp_path / "real", env={"RESIST_FAULTS": "kill:rank=1:round=2:step=7"})
    rows = replay(cfg, tmp_path / "real", tmp_path / "twin")
    lost = [e for r in rows for e in r["events"] if e["event"] == "lost"]
    assert [(e["worker"], e["round"]) for e in lost] == [("w1", 2)]
    assert summary["lost"] == 1 and "w1" not in summary["final_members"]
    assert lost[0]["quorum_wait_s"] < 5  # the lighthouse noticed the missing heartbeat
    same_model(tmp_path / "real", tmp_path / "twin", atol)


def test_a_worker_joins_mid_run(tmp_path):
    cfg = config(2, **{"optim.epochs": 3})
    real = tmp_path / "real"
    started = []

    def start(launcher):
        if not started and len(rows_of(real)) >= 1:
            launcher.start("w2")
            started.append(True)

    # Rank 0 takes 8 s over round 2, so that the joiner's process has started by its end.
    summary = launch(cfg, real, start, env={"RESIST_FAULTS": "delay:rank=0:round=2:step=6:seconds=8"})
    rows = replay(cfg, real, tmp_path / "twin")
    joined = [e for r in rows for e in r["events"] if e["event"] == "joined"]
    assert [e["worker"] for e in joined] == ["w2"] and summary["final_members"] == ["w0", "w1", "w2"]
    assert joined[0]["join_bytes"] > 0
    same_model(real, tmp_path / "twin", 1e-5)


def test_a_worker_lost_while_another_joins(tmp_path):
    """Two events at one round boundary: w1 dies in round 3 while w3 is starting; rank 0 takes 6 s over
    round 3 (a delay fault), so that the joiner is there by its end."""
    cfg = config(3, **{"optim.epochs": 3})
    real = tmp_path / "real"
    started = []

    def start(launcher):
        if not started and len(rows_of(real)) >= 3:  # round 2 is synchronized: round 3 is training
            launcher.start("w3")
            started.append(True)

    launch(cfg, real, start, env={"RESIST_FAULTS": "kill:rank=1:round=3:step=10;delay:rank=0:round=3:step=9:seconds=6"})
    rows = replay(cfg, real, tmp_path / "twin")
    at3 = {(e["event"], e["worker"]) for r in rows if r["round"] == 3 for e in r["events"]}
    assert at3 == {("lost", "w1"), ("joined", "w3")}
    same_model(real, tmp_path / "twin", 1e-5)


def test_local_sgd_recovers_from_any_survivor(tmp_path):
    cfg = config(2, "local_sgd")
    launch(cfg, tmp_path / "real", env={"RESIST_FAULTS": "kill:rank=1:round=2:step=7"})
    replay(cfg, tmp_path / "real", tmp_path / "twin")
    same_model(tmp_path / "real", tmp_path / "twin", 0.0)
