"""Each algorithm's conversation with its peers in one round at S=3, call by call (torchft tests its
LocalSGD against a mocked Manager the same way): which verbs, in which order, with which sizes, and the
bytes they count. The expected sequences are derived here from the model and the plan alone."""

from __future__ import annotations

import pytest
import torch

from resist.comm import run_in_process
from resist.presets import preset
from resist.data import load_dataset
from resist.plan import make_plan
from resist.train.optim import make_optimizer, train_step
from resist.train.trainer import build_algorithm, model_builder

DATA = load_dataset("synthetic", n_train=192, n_test=16, num_classes=4, size=12)
S = 3


def cfg_for(algo):
    return preset("smoke").replace(**{"algo.name": algo, "algo.workers": S, "model.layers": (1, 1, 5, 1),
                                      "data.batch_size": 8, "algo.local_iters": 2})


def record(comm, calls):
    """Wrap the communicator's verbs so that every call is logged as (verb, sizes)."""
    for verb in ("all_reduce", "all_reduce_async", "exchange", "broadcast", "all_gather", "barrier"):
        real = getattr(comm, verb)

        def wrapped(*args, _real=real, _verb=verb, **kw):
            if _verb == "exchange":
                sends, recvs = args
                calls.append((_verb, sorted((d, t.numel()) for d, t in sends), sorted((s, t.numel()) for s, t in recvs)))
            elif _verb != "barrier":
                calls.append((_verb, args[0].numel(), args[0].dtype))
            return _real(*args, **kw)

        setattr(comm, verb, wrapped)


def one_round(algo):
    cfg = cfg_for(algo)

    def body(comm):
        w = build_algorithm(comm, cfg, 4, torch.device("cpu"), 8)
        w.start(0)
        calls: list = []
        record(comm, calls)
        w.begin_round(0)
        opt = make_optimizer(w.store, cfg.optim)
        for step in range(2):
            x = DATA.train.x[step * 8:(step + 1) * 8].permute(0, 3, 1, 2).float() / 255
            train_step(w.store.model, opt, x, DATA.train.y[step * 8:(step + 1) * 8], 0.05, w.after_backward)
        w.end_round(0)
        return calls, dict(comm.bytes.sent), dict(comm.bytes.received)

    return cfg, run_in_process(S, body)


def numel(tensors, dtype):
    return sum(t.numel() for t in tensors if t.dtype == dtype)


def whole_model(cfg):
    model = model_builder(cfg, 4)()
    return list(model.parameters()) + list(model.buffers()), model


def test_local_sgd_all_reduces_the_whole_model_once_per_dtype():
    cfg, ranks = one_round("local_sgd")
    tensors, _ = whole_model(cfg)
    expected = [("all_reduce", numel(tensors, torch.float32), torch.float32),
                ("all_reduce", numel(tensors, torch.int64), torch.int64)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    for calls, sent, received in ranks:
        assert calls == expected
        assert sent["sync"] == received["sync"] == pytest.approx(2 * (S - 1) / S * nbytes, abs=2)


def test_resist_all_reduces_the_shared_layers_then_one_exchange_of_blocks():
    cfg, ranks = one_round("resist")
    _, model = whole_model(cfg)
    cands = (3, 4, 5, 6)  # section 3 of (1, 1, 5, 1) without its strided first block
    shared = [t for name, t in [*model.named_parameters(), *model.named_buffers()]
              if not any(name.startswith(f"blocks.{b}.") for b in cands)]
    cur, nxt = make_plan(0, 0, S, cands), make_plan(0, 1, S, cands)

    def block(b, dtype):
        m = model.blocks[b]
        return numel([*m.parameters(), *m.buffers()], dtype)

    for me, (calls, _, _) in enumerate(ranks):
        sends = sorted((d, block(b, dt)) for b in cands if me in cur.holders(b)
                       for d in nxt.holders(b) if d != me for dt in (torch.float32, torch.int64))
        recvs = sorted((h, block(b, dt)) for b in cands if me in nxt.holders(b) and cur.holders(b) != (me,)
                       for h in cur.holders(b) if h != me for dt in (torch.float32, torch.int64))
        assert calls == [("all_reduce", numel(shared, torch.float32), torch.float32),
                         ("all_reduce", numel(shared, torch.int64), torch.int64),
                         ("exchange", sends, recvs)]


def test_data_parallel_all_reduces_gradient_buckets_every_step_and_buffers_at_the_end():
    cfg, ranks = one_round("data_parallel")
    tensors, model = whole_model(cfg)
    params = numel(list(model.parameters()), torch.float32)
    buffers = list(model.buffers())
    per_step = [("all_reduce_async", params, torch.float32),  # one bucket here: started during backward,
                ("all_reduce", params, torch.float32)]  # and run when the step waits for it (in-process)
    for calls, _, _ in ranks:
        assert calls == per_step * 2 + [("all_reduce", numel(buffers, torch.float32), torch.float32),
                                        ("all_reduce", numel(buffers, torch.int64), torch.int64)]


def test_ensemble_says_nothing():
    _, ranks = one_round("ensemble")
    for calls, sent, received in ranks:
        assert calls == [] and sum(sent.values()) == 0 and sum(received.values()) == 0
