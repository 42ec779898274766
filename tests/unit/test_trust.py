"""Regression tests for the review's findings that have no better home: durable files, no traffic after
the last round, evaluation and checkpoint traffic reported apart, presets that match what they name."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from resist import io
from resist.presets import preset
from resist.data import load_dataset
from resist.train import read_metrics, train

DATA = load_dataset("synthetic", n_train=192, n_test=32, num_classes=4, size=12)


def test_atomic_write_fsyncs_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real(fd))
    io.atomic_write_json({"a": 1}, tmp_path / "summary.json")
    assert synced == [False, True]  # the data, then the rename


def test_ensemble_members_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    cfg = preset("smoke").replace(**{"algo.name": "ensemble", "algo.workers": 2, "model.layers": (1, 1, 3, 1),
                                     "data.batch_size": 8, "run.max_rounds": 1, "run.out": str(tmp_path)})

    def broken(obj, f, *a, **k):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        train(cfg, DATA)
    assert not list(tmp_path.glob("member*.pt*")) and not list(tmp_path.glob(".member*"))


def test_resist_sends_nothing_onward_after_its_last_round(tmp_path):
    """The final round averages the shared layers (and blocks held by several workers); with one holder
    per block nothing else moves, so the round's traffic is exactly the shared all-reduce."""
    cfg = preset("smoke").replace(**{"algo.workers": 3, "model.layers": (1, 1, 7, 1), "data.batch_size": 8,
                                     "algo.local_iters": 2, "run.max_rounds": 3, "run.out": str(tmp_path)})
    summary = train(cfg, DATA)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    with torch.device("meta"):
        from resist.models import create_model

        model = create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
    shared = [t for n, t in [*model.named_parameters(), *model.named_buffers()]
              if not any(n.startswith(f"blocks.{b}.") for b in summary["scaled_blocks"])]
    by_dtype: dict = {}
    for t in shared:
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel() * t.element_size()
    ring = sum(round(2 * 2 / 3 * n) for n in by_dtype.values())
    last = [b - a for a, b in zip(rows[-2]["sent_bytes"], rows[-1]["sent_bytes"])]
    assert last == [ring] * 3
    assert rows[-2]["sent_bytes"][0] - rows[-3]["sent_bytes"][0] > ring  # a round before it moved blocks


def test_evaluation_and_checkpoint_traffic_is_reported_apart_from_training(tmp_path):
    cfg = preset("smoke").replace(**{"algo.workers": 3, "model.layers": (1, 1, 7, 1), "data.batch_size": 8,
                                     "algo.local_iters": 2, "run.max_rounds": 4, "run.eval_every": 2,
                                     "run.out": str(tmp_path)})
    s = train(cfg, DATA)
    for kind in ("eval", "checkpoint"):
        sent, recv = s[f"{kind}_bytes_sent_per_worker"], s[f"{kind}_bytes_recv_per_worker"]
        assert sent[0] == 0 and recv[1:] == [0, 0] and sum(sent) == recv[0] > 0  # all to rank 0
    assert s["sent_bytes_per_worker"] == [max(r["sent_bytes"][k] for r in read_metrics(tmp_path / "metrics.jsonl"))
                                          for k in range(3)]


def test_paper_presets_match_what_they_name():
    r200 = preset("cifar10_resnet200_paper")
    assert (r200.model.name, r200.optim.epochs, r200.algo.local_iters) == ("paper_resnet200", 80, 100)
    for name in ("cifar10_resnet101_paper", "cifar100_resnet101_paper", "cifar10_resnet200_paper"):
        assert preset(name).algo.min_depth == 4  # shares blocks at 8 workers, as the paper does
