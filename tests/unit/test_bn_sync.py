"""BatchNorm statistics averaged every N rounds only (``bn_sync_every``; paper §5 on ImageNet: 1300),
for ResIST and local SGD: what is averaged in the other rounds, what is kept, and what it costs."""

from __future__ import annotations

import json

import pytest
import torch

from resist.comm import run_in_process
from resist.presets import preset
from resist.data import load_dataset
from resist.train import train
from resist.train.trainer import Schedule, build_algorithm

DATA = load_dataset("synthetic", n_train=192, n_test=32, num_classes=4, size=12)


def cfg_for(**over):
    return preset("smoke").replace(**{"data.batch_size": 8, "algo.local_iters": 2, "model.layers": (1, 1, 5, 1),
                                      "run.eval_every": 100, **over})


def workers(cfg, fn):
    sched = Schedule.of(cfg, DATA.n_train)

    def body(comm):
        w = build_algorithm(comm, cfg, 4, torch.device("cpu"), sched.steps_per_epoch)
        w.start(0)
        return fn(w)

    return run_in_process(cfg.algo.workers, body)


def first(tensors):
    return [t.flatten()[0].item() for t in tensors]


@pytest.mark.parametrize("algo,n,min_depth", [("resist", 3, 0), ("resist", 3, 3), ("resist", 4, 4), ("local_sgd", 3, 0)])
def test_a_round_without_statistics_averages_parameters_only(algo, n, min_depth):
    """Every rank's state set to 10 (rank + 1), counters to 6 (rank + 1); after a round that does not
    average statistics, parameters are the holders' mean, and statistics are the rank's own for what it
    held, the lowest holder's for a block it receives."""
    cfg = cfg_for(**{"algo.name": algo, "algo.workers": n, "algo.min_depth": min_depth, "algo.bn_sync_every": 2})

    def body(w):
        me, store = w.comm.rank, w.store
        with torch.no_grad():
            for part in store.all_parts():
                if store.held(part):
                    for t in store.state_tensors(part):
                        t.fill_(10 * (me + 1) if t.is_floating_point() else 6 * (me + 1))
        cur = w.holders(0) if algo == "resist" else w.holders_now()
        w.end_round(0)
        seen = {}
        for part in store.all_parts():
            if store.held(part):
                module = store.module(part)
                seen[part] = (first(module.parameters()), first(module.buffers()))
        return cur, seen

    for rank, (cur, seen) in enumerate(workers(cfg, body)):
        for part, (params, buffers) in seen.items():
            holders = cur.get(part, tuple(range(n)))
            assert params == pytest.approx([10 * sum(h + 1 for h in holders) / len(holders)] * len(params))
            source = rank if rank in holders else holders[0]
            assert buffers == [10.0 * (source + 1) if i % 3 < 2 else 6 * (source + 1) for i in range(len(buffers))]


@pytest.mark.parametrize("algo", ["resist", "local_sgd"])
def test_parameters_do_not_depend_on_when_statistics_are_averaged(algo, tmp_path):
    """Training normalizes with batch statistics, so the running ones never touch a parameter: every
    parameter after 4 rounds is bitwise that of averaging statistics every round. Local SGD's averages
    are linear in the statistics, so after a round that averages them they agree with every round's too,
    up to float rounding; in between, the run reports rank 0's own. And the statistics that are not
    averaged are not sent."""
    over = {"algo.name": algo, "algo.workers": 3, "algo.min_depth": 3 if algo == "resist" else 0, "run.max_rounds": 4}
    runs = {}
    for every in (1, 2, 4, 3):
        out = tmp_path / str(every)
        runs[every] = train(cfg_for(**over, **{"algo.bn_sync_every": every, "run.out": str(out)}), DATA)
        runs[every]["model"] = torch.load(out / "model.pt", weights_only=True)
    names = dict(runs[1]["model"])
    stats = [k for k in names if "running" in k or "num_batches" in k]
    params = [k for k in names if k not in stats]
    for every in (2, 3, 4):
        assert all(torch.equal(runs[every]["model"][k], runs[1]["model"][k]) for k in params)
        assert runs[every]["sent_bytes_per_worker"] < runs[1]["sent_bytes_per_worker"]
    if algo == "local_sgd":
        for every in (2, 4):  # round 4 averages the statistics
            assert all(torch.allclose(runs[every]["model"][k].double(), runs[1]["model"][k].double(), atol=1e-5)
                       for k in stats)
        assert not all(torch.allclose(runs[3]["model"][k].double(), runs[1]["model"][k].double(), atol=1e-5)
                       for k in stats)
        # Per round not averaging statistics, a ring all-reduce of them is saved: 2 (W-1)/W x their bytes.
        nbytes = sum(runs[1]["model"][k].numel() * runs[1]["model"][k].element_size() for k in stats)
        for every, skipped in ((2, 2), (4, 3), (3, 3)):
            saved = runs[1]["sent_bytes_per_worker"][0] - runs[every]["sent_bytes_per_worker"][0]
            assert saved == pytest.approx(skipped * 2 * 2 / 3 * nbytes, abs=skipped)


def test_only_resist_and_local_sgd_defer_statistics():
    for algo in ("data_parallel", "ensemble"):
        with pytest.raises(ValueError, match=f"{algo} has no round average to defer"):
            cfg_for(**{"algo.name": algo, "algo.bn_sync_every": 2})
    with pytest.raises(ValueError, match="bn_sync_every must be >= 1"):
        cfg_for(**{"algo.bn_sync_every": 0})
    cfg = cfg_for(**{"algo.bn_sync_every": 3}).algo
    assert [cfg.syncs_bn(r) for r in range(7)] == [False, False, True, False, False, True, False]
