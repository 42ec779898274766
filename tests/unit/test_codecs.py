"""Codecs: round trips within their error bounds, exact payload bytes, determinism from the key."""

from __future__ import annotations

import math

import pytest
import torch

from resist.comm.codecs import make_codec, payload_bytes

N = 1000  # not a multiple of the chunk: the last chunk is short


def sample(seed=0):
    return torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 3 + 1


@pytest.mark.parametrize("bits", range(1, 9))
def test_quantization_error_is_within_one_level_and_bytes_are_k_bits_per_value(bits):
    codec = make_codec(f"q{bits}", chunk=256)
    x = sample()
    payload = codec.encode(x, (1, 2))
    y = codec.decode(payload, N, (1, 2))
    chunks = math.ceil(N / 256)
    assert payload_bytes(payload) == math.ceil(N * bits / 8) + 8 * chunks  # levels + (offset, scale) per chunk
    for c in range(chunks):
        part = slice(c * 256, min(N, (c + 1) * 256))
        step = (x[part].max() - x[part].min()) / (2**bits - 1)
        assert (y[part] - x[part]).abs().max() <= step * (1 + 1e-5)
    assert torch.equal(y, codec.decode(codec.encode(x, (1, 2)), N, (1, 2)))  # same key, same bits
    assert not torch.equal(y, codec.decode(codec.encode(x, (1, 3)), N, (1, 3)))  # another key, other rounding


def test_stochastic_rounding_is_unbiased():
    codec = make_codec("q2", chunk=64)
    x = sample()
    mean = torch.stack([codec.decode(codec.encode(x, (k,)), N, (k,)) for k in range(400)]).mean(0)
    step = (x.max() - x.min()) / 3
    assert (mean - x).abs().max() < 0.15 * step


def test_constant_chunks_are_exact():
    codec = make_codec("q4")
    x = torch.full((300,), 2.5)
    assert torch.equal(codec.decode(codec.encode(x, (0,)), 300, (0,)), x)


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_casts(name, dtype):
    codec = make_codec(name)
    x = sample()
    payload = codec.encode(x, (0,))
    assert payload_bytes(payload) == 2 * N
    assert torch.equal(codec.decode(payload, N, (0,)), x.to(dtype).float())


def test_topk_keeps_the_largest_values_with_their_indices():
    codec = make_codec("topk", keep=0.25)
    x = sample()
    payload = codec.encode(x, (0,))
    assert payload_bytes(payload) == 250 * 4 + 250 * 4
    y = codec.decode(payload, N, (0,))
    kept = y != 0
    assert kept.sum() == 250 and torch.equal(y[kept], x[kept])
    assert x[~kept].abs().max() <= x[kept].abs().min()


def test_randk_sends_values_only_and_is_unbiased():
    codec = make_codec("randk", keep=0.25)
    x = sample()
    payload = codec.encode(x, (3,))
    assert payload_bytes(payload) == 250 * 4  # the receiver draws the same indices from the key
    y = codec.decode(payload, N, (3,))
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.25)
    mean = torch.stack([codec.decode(codec.encode(x, (k,)), N, (k,)) for k in range(600)]).mean(0)
    assert (mean - x).abs().mean() < 0.35 * x.abs().mean()


@pytest.mark.parametrize("name,kw,message", [("q9", {}, "1 to 8 bits"), ("q0", {}, "1 to 8 bits"),
                                             ("topk", {"keep": 0}, "keep fraction"), ("randk", {"keep": 1.5}, "keep fraction"),
                                             ("zip", {}, "unknown codec"), ("q4", {"chunk": 0}, "chunk")])
def test_bad_codecs_say_what_is_wrong(name, kw, message):
    with pytest.raises(ValueError, match=message):
        make_codec(name, **kw)


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("name", ["q8", "q3", "fp16", "randk"])
def test_compressed_all_reduce_bytes_and_agreement(workers, name):
    """Reduce-scatter of encoded shards, one encoded all-gather of their averages: every rank ends with
    the same bits, the average of the decoded contributions up to one more encoding; bytes are exactly
    the payloads of the shards each rank sends (W-1 in each phase) plus the ring all-reduce of the tail."""
    from resist.comm import run_in_process

    codec, lossy, n = make_codec(name), 700, 1000
    size = -(-lossy // workers)

    def body(comm):
        x = sample(comm.rank)
        comm.all_reduce_coded(x, codec, lossy, (5, 6))
        return x, comm.bytes.sent["sync"], comm.bytes.received["sync"]

    out = run_in_process(workers, body)
    shard = [min(size, max(0, lossy - j * size)) for j in range(workers)]
    ring = round(2 * (workers - 1) / workers * (n - lossy) * 4)
    nbytes = [payload_bytes(codec.encode(torch.zeros(k), (0,))) if k else 0 for k in shard]
    exact = sum(sample(r)[:lossy] for r in range(workers)) / workers
    for me, (x, sent, received) in enumerate(out):
        assert torch.equal(x, out[0][0])
        scatter_sent = sum(nbytes[j] for j in range(workers) if j != me)
        gather_sent = (workers - 1) * nbytes[me]
        assert sent == scatter_sent + gather_sent + ring
        assert received == (workers - 1) * nbytes[me] + scatter_sent + ring
        torch.testing.assert_close(x[lossy:], sum(sample(r)[lossy:] for r in range(workers)) / workers)
    if name != "randk":  # (random-k is unbiased but not bounded)
        levels = {"q8": 255, "q3": 7, "fp16": 2048}[name]
        spread = max(float(sample(r).max() - sample(r).min()) for r in range(workers))
        assert (out[0][0][:lossy] - exact).abs().max() <= 2 * spread / levels  # two encodings, a level each


@pytest.mark.parametrize("name", ["q3", "topk"])
def test_dropped_is_exactly_what_each_contribution_lost(name):
    """Error feedback needs what compression took from the payloads actually sent, per shard (not from
    another encoding of the whole tensor): with top-k, the kept and dropped values split the input."""
    from resist.comm import run_in_process

    codec, lossy, workers = make_codec(name, chunk=64), 700, 3
    size = -(-lossy // workers)

    def body(comm):
        x = sample(comm.rank)
        dropped = torch.full((lossy,), float("nan"))
        comm.all_reduce_coded(x, codec, lossy, (5, 6), dropped)
        return dropped

    for rank, dropped in enumerate(run_in_process(workers, body)):
        x = sample(rank)[:lossy]
        for j in range(workers):
            part = slice(j * size, min(lossy, (j + 1) * size))
            n = part.stop - part.start
            sent = codec.decode(codec.encode(x[part], (5, 6, rank, j)), n, (5, 6, rank, j))
            assert torch.equal(dropped[part], x[part] - sent)
        if name == "topk":
            kept = x - dropped
            assert torch.equal(kept + dropped, x) and bool(((kept == 0) | (dropped == 0)).all())
            assert int((kept != 0).sum()) == sum(math.ceil(0.25 * min(64, n - c)) for n in
                                                 [min(size, lossy - j * size) for j in range(workers)]
                                                 for c in range(0, n, 64))


def test_resist_with_8_bit_weights_learns_and_sends_less(tmp_path):
    from resist.presets import preset
    from resist.data import load_dataset
    from resist.train import train

    data = load_dataset("synthetic", n_train=256, n_test=128, num_classes=4, size=12)
    cfg = preset("smoke").replace(**{"algo.workers": 2, "optim.epochs": 6, "data.batch_size": 16, "run.eval_every": 4})
    plain = train(cfg.replace(**{"run.out": str(tmp_path / "a")}), data)
    q8 = train(cfg.replace(**{"run.out": str(tmp_path / "b"), "algo.compress": "q8"}), data)
    assert q8["best_acc"] > 50 and q8["best_acc"] >= plain["best_acc"] - 5  # 4 classes: chance is 25%
    assert max(q8["sent_bytes_per_worker"]) < 0.5 * max(plain["sent_bytes_per_worker"])


def test_data_parallel_with_8_bit_gradients_learns_and_sends_a_third(tmp_path):
    from resist.presets import preset
    from resist.data import load_dataset
    from resist.train import train

    data = load_dataset("synthetic", n_train=256, n_test=128, num_classes=4, size=12)
    cfg = preset("smoke").replace(**{"algo.name": "data_parallel", "algo.workers": 2, "optim.epochs": 4,
                                     "data.batch_size": 16, "run.eval_every": 4})
    plain = train(cfg.replace(**{"run.out": str(tmp_path / "a")}), data)
    q8 = train(cfg.replace(**{"run.out": str(tmp_path / "b"), "algo.compress": "q8", "algo.error_feedback": True}), data)
    assert q8["best_acc"] > 50 and q8["best_acc"] >= plain["best_acc"] - 5  # 4 classes: chance is 25%
    # gradients at 8 bits plus a scale and offset per 256 values; BatchNorm statistics still fp32
    assert max(q8["sent_bytes_per_worker"]) < 0.35 * max(plain["sent_bytes_per_worker"])


def test_compressed_updates_lose_less_than_compressed_weights(tmp_path):
    """One round of local SGD at 4 bits: sending the change since the round began (small values) lands
    far closer to the exact average than sending the weights; error feedback keeps what was dropped."""
    from resist.presets import preset
    from resist.data import load_dataset
    from resist.train import train

    data = load_dataset("synthetic", n_train=256, n_test=64, num_classes=4, size=12)
    cfg = preset("smoke").replace(**{"algo.name": "local_sgd", "algo.workers": 2, "data.batch_size": 16,
                                     "run.max_rounds": 1, "run.eval_every": 100})

    def final(name, **over):
        train(cfg.replace(**{"run.out": str(tmp_path / name), **over}), data)
        return torch.load(tmp_path / name / "model.pt", weights_only=True)

    exact = final("exact")
    weights = final("weights", **{"algo.compress": "q4"})
    update = final("update", **{"algo.compress": "q4", "algo.compress_what": "update"})
    fed = final("ef", **{"algo.compress": "q4", "algo.compress_what": "update", "algo.error_feedback": True})
    params = [k for k in exact if "running" not in k and exact[k].is_floating_point()]
    err = {name: sum((m[k] - exact[k]).norm() ** 2 for k in params) ** 0.5
           for name, m in (("weights", weights), ("update", update), ("ef", fed))}
    assert 0 < err["update"] < 0.2 * err["weights"]
    assert torch.equal(torch.stack([(fed[k] - update[k]).abs().max() for k in params]).max(), torch.tensor(0.0))
    ckpt = torch.load(sorted((tmp_path / "ef" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert [float(r["residual"].abs().max()) > 0 for r in ckpt["rank_state"]] == [True, True]


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_in_slices_round_trips(bits, monkeypatch):
    from resist.comm import codecs

    monkeypatch.setattr(codecs, "_SLICE", 64)  # many slices, ragged last one
    for n in (1, 7, 64, 65, 1000):
        q = torch.randint(0, 2**bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        packed = codecs._pack(q, bits)
        assert packed.numel() == math.ceil(n * bits / 8) and torch.equal(codecs._unpack(packed, bits, n), q)
