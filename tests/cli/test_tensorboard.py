"""``--log tensorboard``: each metrics row's numbers also go to TensorBoard event files beside
metrics.jsonl (which stays the source of truth); without the package, one line and exit 2."""

from __future__ import annotations

import json

import pytest

from resist.cli import main

SMOKE = ["train", "smoke", "--workers", "2", "--max-rounds", "2", "--eval-every", "1"]


def test_tensorboard_event_file_holds_the_metrics_rows(capsys, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([*SMOKE, "--log", "jsonl,tensorboard", "--out", str(out)]) == 0, capsys.readouterr()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = sorted(out.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "test_acc", "time_s", "compute_s", "sent_bytes/max", "sent_bytes/total"} <= tags
    for tag, key in (("loss", "loss"), ("lr", "lr"), ("test_acc", "test_acc"), ("time_s", "time_s")):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == [(r["round"], pytest.approx(r[key], rel=1e-6)) for r in rows], tag
    total = [e.value for e in acc.Scalars("sent_bytes/total")]
    assert total == [pytest.approx(sum(r["sent_bytes"]), rel=1e-6) for r in rows]
    # --force replaces the run, its event files included.
    assert main([*SMOKE, "--max-rounds", "1", "--force", "--out", str(out)]) == 0
    assert not list(out.glob("events.out.tfevents.*"))


def test_tensorboard_missing_is_one_line(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    rc = main([*SMOKE, "--log", "tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "--log tensorboard needs the tensorboard package" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_logger_is_refused(capsys, tmp_path):
    rc = main([*SMOKE, "--log", "jsonl,wandb", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown log 'wandb'" in err and len(err.strip().splitlines()) == 1


def test_a_resumed_run_continues_its_events(capsys, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([*SMOKE, "--max-rounds", "1", "--log", "tensorboard", "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--max-rounds", "2"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [r["round"] for r in rows] == [0, 1]
