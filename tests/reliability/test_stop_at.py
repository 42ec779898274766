"""--stop-at: a run ends at the first evaluation as good as the target, checkpointed, and stays ended
unless a resume asks for another target (issue 20 part 4: time to a target without training past it)."""

from __future__ import annotations

import json

import pytest
import torch

from resist.data import load_dataset
from resist.presets import preset
from resist.train import train

DATA = load_dataset("synthetic", n_train=192, n_test=64, num_classes=4, size=12)


def cfg_for(tmp_path, **over):
    return preset("smoke").replace(**{"data.batch_size": 8, "algo.local_iters": 2, "optim.epochs": 3, "optim.lr": 0.05,
                                      "run.eval_every": 1, "run.out": str(tmp_path), **over})


def rows(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_stops_at_the_first_evaluation_that_reaches_the_target(tmp_path):
    full = train(cfg_for(tmp_path / "full"), DATA)
    accs = [r["test_acc"] for r in rows(tmp_path / "full")]
    first = next(i for i, a in enumerate(accs) if a > accs[0])  # reached part way, not at the first evaluation
    target = accs[first]
    assert 0 < first < len(accs) - 1, accs
    stopped = train(cfg_for(tmp_path / "stop", **{"run.stop_at": target}), DATA)
    assert stopped["stopped_at_target"] == {"round": first, "target": target, "score": accs[first]}
    assert stopped["rounds"] == first + 1 < full["rounds"]
    assert [r["test_acc"] for r in rows(tmp_path / "stop")] == accs[:first + 1]  # the same run, cut there
    assert (tmp_path / "stop" / "model.pt").is_file() and list((tmp_path / "stop" / "checkpoints").iterdir())
    # Resuming with the same target leaves it as it is; without one it trains on to the end, exactly as
    # the run that never stopped.
    again = train(cfg_for(tmp_path / "stop", **{"run.stop_at": target}), DATA, resume=True)
    assert again == stopped
    rest = train(cfg_for(tmp_path / "stop"), DATA, resume=True)
    assert rest["stopped_at_target"] is None and rest["rounds"] == full["rounds"]
    assert [r["test_acc"] for r in rows(tmp_path / "stop")] == accs
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "stop" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_target_never_reached_trains_every_epoch(tmp_path):
    summary = train(cfg_for(tmp_path, **{"run.stop_at": 101.0}), DATA)
    assert summary["stopped_at_target"] is None and summary["rounds"] == len(rows(tmp_path))


def test_stop_at_must_be_finite():
    with pytest.raises(ValueError, match="stop_at must be a finite score"):
        preset("smoke").replace(**{"run.stop_at": float("nan")})
