"""Aligned buckets (what CUDA gets): every state tensor's view starts at a multiple of the alignment, the
padding stays zero, and training gives the same bits as with tight buckets (CPU-forced here; on CUDA,
cuDNN's channels-last kernels stopped with "misaligned address" on tight buckets, 2026-11-27 on an H200)."""

from __future__ import annotations

import pytest
import torch

from resist import aggregate
from resist.algorithms import data_parallel, parts
from resist.data import load_dataset
from resist.train import train
from test_algorithms import tiny

DATA = load_dataset("synthetic", n_train=256, n_test=128, num_classes=4, size=12)


def test_pack_views_unpack_round_trip_with_alignment():
    ts = [torch.randn(3), torch.randn(2, 5), torch.arange(7), torch.randn(1, 1, 1)]
    flats = aggregate.pack(ts, 64)
    assert [f.numel() for f in flats] == [16 + 16 + 16, 8]  # 64 bytes = 16 float32 or 8 int64 values
    for t, v in zip(ts, aggregate.views(flats, ts, 64)):
        assert torch.equal(t, v) and (v.data_ptr() - flats[0 if v.is_floating_point() else 1].data_ptr()) % 64 == 0
    assert float(flats[0][3:16].abs().sum()) == 0.0  # padding is zeros
    out = [torch.empty_like(t) for t in ts]
    aggregate.unpack(flats, out, 64)
    assert all(torch.equal(a, b) for a, b in zip(ts, out))
    assert [f.numel() for f in aggregate.pack(ts)] == [3 + 10 + 1, 7]  # tight by default


def _final(cfg, tmp_path, monkeypatch, align):
    asked = []

    def alignment(device):
        asked.append(device)
        return align

    monkeypatch.setattr(parts, "alignment", alignment)
    monkeypatch.setattr(data_parallel, "alignment", alignment)
    cfg = cfg.replace(**{"run.out": str(tmp_path / f"a{align}")})
    train(cfg, DATA)
    assert asked  # the buckets were laid out by it
    return torch.load(tmp_path / f"a{align}" / "model.pt", weights_only=True)


@pytest.mark.parametrize("algo,workers", [("resist", 3), ("local_sgd", 2), ("data_parallel", 2)])
def test_aligned_buckets_train_the_same_bits(algo, workers, tmp_path, monkeypatch):
    cfg = tiny(**{"algo.name": algo, "algo.workers": workers, "optim.epochs": 2})
    tight = _final(cfg, tmp_path, monkeypatch, 0)
    aligned = _final(cfg, tmp_path, monkeypatch, 128)
    assert tight.keys() == aligned.keys()
    for k in tight:
        assert torch.equal(tight[k], aligned[k]), k


def test_store_views_are_aligned(monkeypatch):
    monkeypatch.setattr(parts, "alignment", lambda device: 128)
    from resist.models import create_model
    store = parts.PartStore(lambda: create_model("paper_resnet", num_classes=4, width=0.25, layers=(1, 1, 3, 1)), torch.device("cpu"),
                            candidates=(), carry_momentum=True, init_seed=0)
    store.start(store.all_parts(), None)
    store.bucket("shared", store.all_parts())
    starts = {f.data_ptr() for flats in store.flats.values() for f in flats}
    for name, t in [*store.model.named_parameters(), *store.model.named_buffers()]:
        base = max(s for s in starts if s <= t.data_ptr())
        assert (t.data_ptr() - base) % 128 == 0, name
