"""The learning-rate schedule (train/optim.py lr_at): step decay as before, linear warm-up, cosine."""

from __future__ import annotations

import json
import math

import pytest

from resist.config import OptimConfig
from resist.presets import preset
from resist.data import load_dataset
from resist.train import train
from resist.train.optim import lr_at


def test_step_schedule_without_warmup_is_the_papers_step_decay():
    o = OptimConfig(epochs=10, lr=0.1, lr_decay_at=(0.5, 0.75))
    got = [lr_at(o, s, 200) for s in range(200)]
    assert got == [0.1] * 100 + [0.1 * 0.1] * 50 + [0.1 * 0.1**2] * 50


def test_warmup_rises_linearly_then_the_schedule_continues():
    o = OptimConfig(epochs=10, lr=0.4, lr_warmup_epochs=1, lr_decay_at=(0.5,))
    got = [lr_at(o, s, 100) for s in range(100)]
    assert got[:10] == pytest.approx([0.4 * (k + 1) / 10 for k in range(10)])
    assert got[10:50] == [0.4] * 40 and got[50:] == [0.4 * 0.1] * 50


def test_cosine_falls_from_lr_after_the_warmup_towards_zero():
    o = OptimConfig(epochs=4, lr=1e-3, lr_schedule="cosine", lr_warmup_epochs=1)
    total = 80
    got = [lr_at(o, s, total) for s in range(total)]
    assert got[19] == pytest.approx(1e-3) and got[20] == pytest.approx(1e-3)  # end of warm-up, start of cosine
    assert got[50] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 30 / 60)))
    assert all(a > b for a, b in zip(got[20:], got[21:])) and 0 < got[-1] < 1e-6


@pytest.mark.parametrize("over,message", [({"lr_schedule": "linear"}, "unknown lr_schedule 'linear'"),
                                          ({"lr_warmup_epochs": -1}, "lr_warmup_epochs must be >= 0"),
                                          ({"lr_warmup_epochs": 10}, "below epochs")])
def test_bad_schedules_raise_value_error(over, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(epochs=10, **over)


def test_the_trainer_steps_with_the_schedule(tmp_path):
    data = load_dataset("synthetic", n_train=128, n_test=32, num_classes=4, size=12)
    cfg = preset("smoke").replace(**{"optim.lr_schedule": "cosine", "optim.lr_warmup_epochs": 0.5, "algo.workers": 2,
                                     "data.batch_size": 8, "optim.epochs": 2, "algo.local_iters": 2,
                                     "run.eval_every": 100, "run.out": str(tmp_path)})
    train(cfg, data)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    total = 16  # 2 epochs of 64 images per worker in batches of 8
    assert [r["lr"] for r in rows] == [lr_at(cfg.optim, r["step"] - 1, total) for r in rows]
    assert rows[0]["lr"] == pytest.approx(0.05 * 2 / 4)  # the round's last step, 2 of the 4 warm-up steps


def test_dataset_epochs_give_every_worker_a_pass_over_the_whole_set():
    """The authors' code has every worker iterate the whole training set each epoch: with epoch_unit
    dataset an epoch is n / B steps per worker at any worker count (S x a shard epoch's), which is
    what the paper presets count; shard epochs shrink with S."""
    from resist.presets import preset
    from resist.train.trainer import Schedule

    paper = preset("cifar10_resnet101_paper")
    assert paper.optim.epoch_unit == "dataset" and preset("cifar10_gpu_short").optim.epoch_unit == "shard"
    for s in (2, 4, 8):
        cfg = paper.replace(**{"algo.workers": s})
        dataset = Schedule.of(cfg, 50_000)
        shard = Schedule.of(cfg.replace(**{"optim.epoch_unit": "shard"}), 50_000)
        assert dataset.steps_per_epoch == s * shard.steps_per_epoch
        assert dataset.total_steps == 160 * s * ((50_000 // s) // 128)
    assert Schedule.of(paper, 50_000).total_steps == 160 * 4 * 97  # 62,080 steps per worker at 4 workers
