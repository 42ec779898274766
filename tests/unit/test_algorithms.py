"""The algorithms on the in-process runtime: exact equivalences, aggregation semantics, integration."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from resist.algorithms.parts import init_model, tensors_of
from resist.comm import run_in_process
from resist.presets import preset
from resist.data import BatchStream, load_dataset
from resist.models import create_model
from resist.train import train
from resist.train.optim import make_optimizer, train_step
from resist.train.trainer import Schedule, build_algorithm, model_builder

DATA = load_dataset("synthetic", n_train=256, n_test=128, num_classes=4, size=12)


def tiny(**over):
    base = {"data.batch_size": 16, "optim.epochs": 1, "algo.local_iters": 3, "run.eval_every": 100}
    return preset("smoke").replace(**{**base, **over})


def reference_sgd(cfg, restart_every: int | None) -> torch.nn.Module:
    """Plain single-worker SGD on the full model, written out by hand."""
    model = init_model(create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers),
                       cfg.run.seed)
    sched = Schedule.of(cfg, len(DATA.train.y))
    stream = BatchStream(DATA.train, DATA.mean, DATA.std, 1, 0, cfg.data.batch_size, cfg.run.seed)
    o = cfg.optim
    opt = None
    for step in range(min(sched.total_steps, sched.rounds * cfg.algo.local_iters)):
        if opt is None or (restart_every and step % restart_every == 0):
            opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        decays = sum(step >= -(-f * sched.total_steps // 1) for f in o.lr_decay_at)
        for g in opt.param_groups:
            g["lr"] = o.lr * 0.1**decays
        x, y = stream.batch(step)
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def trained_state(cfg, tmp_path):
    cfg = cfg.replace(**{"run.out": str(tmp_path)})
    train(cfg, DATA)
    return torch.load(tmp_path / "model.pt", weights_only=True)


@pytest.mark.parametrize("algo", ["resist", "local_sgd", "data_parallel"])
@pytest.mark.parametrize("carry", [False, True])
def test_one_worker_equals_plain_sgd_bitwise(algo, carry, tmp_path):
    cfg = tiny(**{"algo.name": algo, "algo.workers": 1, "algo.carry_momentum": carry, "optim.epochs": 2,
                  "optim.lr_decay_at": (0.3, 0.7)})
    restart = None if carry or algo == "data_parallel" else cfg.algo.local_iters
    ref = reference_sgd(cfg, restart).state_dict()
    got = trained_state(cfg, tmp_path)
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_momentum_restart_matters(tmp_path):
    """Guards the test above: restarting momentum and carrying it must give different models."""
    cfg = tiny(**{"algo.workers": 1, "optim.epochs": 2})
    a = trained_state(cfg, tmp_path / "a")
    b = trained_state(cfg.replace(**{"algo.carry_momentum": True}), tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _workers(cfg, fn):
    """Run ``fn(worker)`` on every rank of an in-process world after ``start(0)``."""
    sched = Schedule.of(cfg, len(DATA.train.y))

    def body(comm):
        w = build_algorithm(comm, cfg, 4, torch.device("cpu"), sched.steps_per_epoch)
        w.start(0)
        return fn(w)

    return run_in_process(cfg.algo.workers, body)


@pytest.mark.parametrize("workers,min_depth", [(3, 0), (3, 3), (4, 4)])
def test_sync_averages_each_block_over_its_holders(workers, min_depth):
    cfg = tiny(**{"algo.workers": workers, "algo.min_depth": min_depth, "model.layers": (1, 1, 5, 1)})

    def body(w):
        me = w.comm.rank
        with torch.no_grad():
            for part in w.store.all_parts():
                if w.store.held(part):
                    for t in w.store.state_tensors(part):
                        t.fill_(10 * (me + 1) if t.is_floating_point() else 6 * (me + 1))
        cur, nxt = w.holders(0), w.holders(1)
        before = dict(w.comm.bytes.sent)
        w.end_round(0)
        seen = {}
        for b in w.store.candidates:
            assert w.store.held(b) == (me in nxt[b]), "holds exactly next round's blocks"
            if w.store.held(b):
                ts = w.store.state_tensors(b)
                seen[b] = ([t.flatten()[0].item() for t in ts if t.is_floating_point()],
                           [t.flatten()[0].item() for t in ts if not t.is_floating_point()])
        shared = [t.flatten()[0].item() for t in w.store.state_tensors("stem")]
        return cur, nxt, seen, shared, w.comm.bytes.sent["sync"] - before.get("sync", 0)

    results = _workers(cfg, body)
    n = workers
    for cur, nxt, seen, shared, _ in results:
        assert shared[0] == pytest.approx(10 * (n + 1) / 2)
        for b, (floats, ints) in seen.items():
            h = [r + 1 for r in cur[b]]
            assert floats == pytest.approx([10 * sum(h) / len(h)] * len(floats))
            assert ints and ints == [6 * sum(h) // len(h)] * len(ints)  # BN batch counters travel too


@pytest.mark.parametrize("workers,min_depth", [(2, 0), (3, 0), (4, 3)])
def test_bytes_are_shared_all_reduce_plus_blocks_that_change_holder(workers, min_depth):
    """Peer to peer: a block goes from each holder to each *other* next holder, nothing more (§2.5)."""
    cfg = tiny(**{"algo.workers": workers, "algo.min_depth": min_depth, "model.layers": (1, 1, 7, 1)})

    def body(w):
        me, n = w.comm.rank, w.comm.world_size
        cur, nxt = w.holders(0), w.holders(1)
        nbytes = lambda part: sum(t.numel() * t.element_size() for t in w.store.state_tensors(part))  # noqa: E731
        flats = len(w.store.flats["shared"])  # one flat buffer per dtype: floats, BatchNorm's int64 counters
        expect_sent = 2 * (n - 1) / n * sum(nbytes(p) for p in w.store.shared_parts)
        expect_recv = expect_sent
        sends = recvs = 0
        for b in w.store.candidates:
            if me in cur[b]:
                expect_sent += nbytes(b) * len([d for d in nxt[b] if d != me])
                sends += flats * len([d for d in nxt[b] if d != me])
            if me in nxt[b] and cur[b] != (me,):
                expect_recv += nbytes(b) * len([h for h in cur[b] if h != me])
                recvs += flats * len([h for h in cur[b] if h != me])
        w.end_round(0)
        expect_messages = flats * 2 * (n - 1) + max(sends, recvs)  # ring steps, then one batched exchange
        return (expect_sent, expect_recv, w.comm.bytes.sent["sync"], w.comm.bytes.received["sync"],
                expect_messages, w.comm.bytes.messages["sync"])

    total_moved = 0
    for es, er, s, r, em, m in _workers(cfg, body):
        assert s == pytest.approx(es, abs=1) and r == pytest.approx(er, abs=1)
        assert m == em
        total_moved += s
    assert total_moved > 0


def test_worker_holds_only_its_sub_resnet():
    cfg = tiny(**{"algo.workers": 4, "model.layers": (1, 1, 9, 1)})

    def body(w):
        held = [b for b in w.store.candidates if w.store.held(b)]
        meta = [b for b in w.store.candidates if not w.store.held(b)]
        return held, meta, w.holders(0)

    for me, (held, meta, holders) in enumerate(_workers(cfg, body)):
        assert held == [b for b in holders if me in holders[b]]
        assert len(held) == 2 and len(meta) == 6


def test_integration_loss_falls_and_accuracy_above_chance(tmp_path):
    cfg = tiny(**{"algo.workers": 2, "optim.epochs": 6, "run.eval_every": 4, "run.out": str(tmp_path)})
    summary = train(cfg, DATA)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert summary["best_acc"] > 50.0  # 4 classes: chance is 25%
    assert (tmp_path / "config.json").exists() and (tmp_path / "summary.json").exists()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    model = create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
    model.load_state_dict(state)


def _plain_batches(cfg, n):
    stream = BatchStream(DATA.train, DATA.mean, DATA.std, cfg.algo.workers, 0, cfg.data.batch_size,
                         cfg.run.seed + 1, augment=False)
    return [stream.batch(k) for k in range(n)]


@pytest.mark.parametrize("bn_eval", ["average", "batch", "recalibrate"])
def test_bn_eval_modes_match_a_hand_evaluation_of_the_saved_model(bn_eval, tmp_path):
    """The reported accuracy is the saved model's under the chosen BatchNorm mode, computed here by hand;
    and the three modes normalize with different statistics."""
    from resist.tasks.evaluation import predict, recalibrate

    cfg = tiny(**{"algo.workers": 2, "algo.bn_eval": bn_eval, "run.out": str(tmp_path)})
    summary = train(cfg, DATA)
    model = create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.set_residual_scale(summary["scaled_blocks"], summary["eval_scale"])
    stats = [b.clone() for b in model.buffers()]
    if bn_eval == "recalibrate":
        recalibrate(model, _plain_batches(cfg, cfg.algo.recalib_batches), "cpu")
        assert any(not torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    test = [(DATA.test.x[i:i + 500], DATA.test.y[i:i + 500]) for i in range(0, len(DATA.test.y), 500)]
    from resist.data import to_float
    logits, labels = predict(model, [(to_float(x, DATA.mean, DATA.std), y) for x, y in test], bn_eval, "cpu")
    expected = 100.0 * (logits.argmax(1) == labels).double().mean().item()
    assert summary["final_acc"] == expected
    if bn_eval == "batch":  # test-batch statistics leave the running ones alone
        assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))


def test_bn_eval_modes_give_different_predictions(tmp_path):
    cfg = tiny(**{"algo.workers": 2, "run.out": str(tmp_path)})
    train(cfg, DATA)
    from resist.tasks.evaluation import predict, recalibrate
    from resist.data import to_float

    def logits(mode):
        model = create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
        model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
        if mode == "recalibrate":
            recalibrate(model, _plain_batches(cfg, 3), "cpu")
        return predict(model, [(to_float(DATA.test.x, DATA.mean, DATA.std), DATA.test.y)],
                       "batch" if mode == "batch" else "average", "cpu")[0]

    a, b, r = logits("average"), logits("batch"), logits("recalibrate")
    assert not torch.allclose(a, b) and not torch.allclose(a, r) and not torch.allclose(b, r)


@pytest.mark.parametrize("bn_eval", ["average", "recalibrate"])
def test_ensemble_accuracy_is_that_of_the_members_average_logits(bn_eval, tmp_path):
    from resist.tasks.evaluation import predict, recalibrate
    from resist.data import to_float

    cfg = tiny(**{"algo.name": "ensemble", "algo.workers": 2, "algo.bn_eval": bn_eval, "run.out": str(tmp_path)})
    summary = train(cfg, DATA)
    assert summary["sent_bytes_per_worker"] == [0, 0]
    x = to_float(DATA.test.x, DATA.mean, DATA.std)
    total = 0
    for rank in range(2):
        member = torch.load(tmp_path / f"member{rank}.pt", weights_only=True)
        model = create_model("paper_resnet", num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
        model.load_state_dict(member["state_dict"], strict=False)
        model.skip = frozenset(member["skip"])
        if bn_eval == "recalibrate":
            stream = BatchStream(DATA.train, DATA.mean, DATA.std, 2, rank, cfg.data.batch_size, cfg.run.seed + 1,
                                 augment=False)
            recalibrate(model, [stream.batch(k) for k in range(cfg.algo.recalib_batches)], "cpu")
        total = total + predict(model, [(x, DATA.test.y)], "average", "cpu")[0]
    expected = 100.0 * ((total / 2).argmax(1) == DATA.test.y).double().mean().item()
    assert summary["final_acc"] == pytest.approx(expected, abs=1e-9)


def test_ensemble_members_start_from_their_own_initialization():
    cfg = tiny(**{"algo.name": "ensemble", "algo.workers": 3})
    stems = _workers(cfg, lambda w: [t.clone() for t in tensors_of(w.store.module("stem")) if t.is_floating_point()][0])
    assert not torch.equal(stems[0], stems[1]) and not torch.equal(stems[1], stems[2])
    again = _workers(cfg, lambda w: [t.clone() for t in tensors_of(w.store.module("stem")) if t.is_floating_point()][0])
    assert all(torch.equal(a, b) for a, b in zip(stems, again))  # still a pure function of the seed


def test_recalibrating_an_ensemble_member_for_evaluation_leaves_its_statistics_alone():
    cfg = tiny(**{"algo.name": "ensemble", "algo.workers": 2, "algo.bn_eval": "recalibrate"})

    def body(w):
        w.begin_round(0)
        x, y = _plain_batches(cfg, 1)[0]
        train_step(w.store.model, make_optimizer(w.store, cfg.optim), x, y, 0.05, w.after_backward)
        before = [b.clone() for b in w.store.model.buffers() if not b.is_meta]
        from resist.tasks.classification import Accuracy

        w.evaluate(Accuracy(lambda: iter([(x, y)]), lambda: iter(_plain_batches(cfg, 2)), "recalibrate", "cpu"))
        after = [b for b in w.store.model.buffers() if not b.is_meta]
        return all(torch.equal(a, b) for a, b in zip(before, after))

    assert _workers(cfg, body) == [True, True]


def _sent_per_round(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    totals = [max(r["sent_bytes"]) for r in rows]
    return [b - a for a, b in zip([0] + totals, totals)]


#: With an outer step a block's outer momentum travels with it to new holders, but a whole round's
#: (the same on every rank) stays home: whole rounds send local SGD's (DiLoCo's) bytes either way.
OUTER = pytest.mark.parametrize("outer", [{}, {"algo.outer_lr": 1.0, "algo.outer_momentum": 0.5}],
                                ids=["plain", "outer"])


@OUTER
def test_warmup_trains_the_whole_scaled_network_then_resist_moves_less(outer, tmp_path):
    """Warm-up rounds are local SGD on the whole network, residual branches scaled by c (§2.6): each
    sends exactly local SGD's bytes; the rounds after it send exactly a plain ResIST run's."""
    cfg = tiny(**{"algo.workers": 2, "algo.warmup_epochs": 0.5, "optim.epochs": 2, **outer})

    def body(w):
        assert w.holders(0)[w.store.candidates[0]] == (0, 1) and w.warmup_rounds < 10
        assert all(w.store.held(b) for b in w.store.candidates)
        w.begin_round(0)
        return w.warmup_rounds, {w.store.model.blocks[b].residual_scale for b in w.store.candidates}

    (warm, scales), _ = _workers(cfg, body)
    assert scales == {0.5} and 0 < warm
    warmed = _sent_per_round(trained(cfg, tmp_path / "warm"))
    lsgd = _sent_per_round(trained(cfg.replace(**{"algo.name": "local_sgd", "algo.warmup_epochs": 0}), tmp_path / "l"))
    plain = _sent_per_round(trained(cfg.replace(**{"algo.warmup_epochs": 0}), tmp_path / "r"))
    assert warmed[:warm] == lsgd[:warm]
    assert warmed[warm:] == plain[warm:] and max(warmed[warm:-1]) < min(lsgd)


@OUTER
def test_cooldown_ends_as_local_sgd_on_the_folded_whole_network(outer, tmp_path):
    """Cool-down rounds (the last 0.5 of 2 epochs) are local SGD on the whole network: each sends exactly
    local SGD's bytes, the rounds before it a plain ResIST run's; c is folded into the branch outputs at
    its first round, so the branches train and are evaluated at scale 1 and the summary says so."""
    cfg = tiny(**{"algo.workers": 2, "algo.cooldown_epochs": 0.5, "optim.epochs": 2, **outer})

    def body(w):
        first = w.cooldown_from
        assert w.holders(first - 1) != w.holders(first) and w.holders(first)[w.store.candidates[0]] == (0, 1)
        return first

    first = _workers(cfg, body)[0]
    cooled = _sent_per_round(trained(cfg, tmp_path / "cool"))
    lsgd = _sent_per_round(trained(cfg.replace(**{"algo.name": "local_sgd", "algo.cooldown_epochs": 0}), tmp_path / "l"))
    plain = _sent_per_round(trained(cfg.replace(**{"algo.cooldown_epochs": 0}), tmp_path / "r"))
    assert 0 < first < len(cooled) - 1
    # The round before the cool-down delivers every block to everyone, so it sends more than ResIST's.
    assert cooled[:first - 1] == plain[:first - 1] and cooled[first:] == lsgd[first:]
    summary = json.loads((tmp_path / "cool" / "summary.json").read_text())
    assert summary["eval_scale"] == 1.0
    kept = trained(cfg.replace(**{"algo.cooldown_fold": False}), tmp_path / "keep")
    assert json.loads((kept / "summary.json").read_text())["eval_scale"] == 0.5


def test_cooldown_fold_rescales_carried_and_outer_momentum():
    """w' = c w divides the gradients of a folded weight by c and multiplies its changes by c: a carried
    momentum (averaged gradients) follows the first, an outer momentum (averaged changes) the second."""
    cfg = tiny(**{"algo.workers": 2, "algo.cooldown_epochs": 0.5, "optim.epochs": 2, "algo.carry_momentum": True,
                  "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9})

    def body(w):
        store, name = w.store, f"blocks.{w.store.candidates[0]}.conv2.weight"
        for b in store.candidates:
            if not store.held(b):
                store.bucket(b, [b], fresh=True)
                for t in store.state_tensors(b):
                    t.fill_(1.0)
        store.momentum[name].fill_(1.0)
        store.outer_momentum[name].fill_(1.0)
        weight = store.model.get_parameter(name).detach().clone()
        w.fold_scale()
        return (store.momentum[name].unique().tolist(), store.outer_momentum[name].unique().tolist(),
                torch.equal(store.model.get_parameter(name), weight * 0.5), w.eval_scale())

    assert _workers(cfg, body)[0] == ([2.0], [0.5], True, 1.0)


def trained(cfg, out):
    train(cfg.replace(**{"run.out": str(out)}), DATA)
    return out


def test_naive_partition_deals_blocks_of_every_section():
    cfg = tiny(**{"algo.workers": 2, "algo.partition": "naive", "model.layers": (2, 2, 3, 2)})
    cands = _workers(cfg, lambda w: w.store.candidates)[0]
    model = model_builder(cfg, 4)()
    assert set(cands) == set(model.skippable)
    assert any(b in model.sections[0] for b in cands) and any(b in model.sections[3] for b in cands)
    assert tensors_of(model.blocks[0])[0].is_meta


def test_data_parallel_buckets_do_not_change_the_result(tmp_path, monkeypatch):
    """Gradients as views of many small buckets, each all-reduced as soon as backward completes it,
    give bit for bit the model of one bucket reduced after backward."""
    from resist.algorithms.data_parallel import DataParallel

    cfg = tiny(**{"algo.name": "data_parallel", "algo.workers": 3, "optim.epochs": 1})
    one = trained_state(cfg, tmp_path / "one")
    monkeypatch.setattr(DataParallel, "BUCKET_BYTES", 512)
    many = trained_state(cfg, tmp_path / "many")
    assert one.keys() == many.keys()
    for k in one:
        assert torch.equal(one[k], many[k]), k


def test_data_parallel_starts_buckets_in_order(monkeypatch):
    """Buckets reach the communicator in bucket order on every rank, whatever order backward fills them."""
    from resist.algorithms.data_parallel import DataParallel

    monkeypatch.setattr(DataParallel, "BUCKET_BYTES", 512)
    cfg = tiny(**{"algo.name": "data_parallel", "algo.workers": 2})

    def body(w):
        w.begin_round(0)
        seen = []
        start = w.comm.all_reduce_async
        w.comm.all_reduce_async = lambda t, average=False: seen.append(t.data_ptr()) or start(t, average)
        for k in reversed(range(len(w._buckets))):  # fill the last bucket first
            for _ in range(w._sizes[k]):
                w._ready(k)
        w.after_backward()
        return seen == [b.data_ptr() for b in w._buckets] and len(seen) > 1

    assert _workers(cfg, body) == [True, True]


@pytest.mark.parametrize("over", [{"run.amp": "bf16"}, {"run.amp": "fp16"}, {"run.channels_last": True},
                                  {"run.amp": "fp16", "algo.name": "data_parallel"}])
def test_mixed_precision_and_channels_last_train_with_fp32_state_and_traffic(over, tmp_path):
    cfg = tiny(**{"algo.workers": 2, "optim.epochs": 4, "run.eval_every": 4, "algo.name": over.get("algo.name", "resist")})
    plain = train(cfg.replace(**{"run.out": str(tmp_path / "fp32")}), DATA)
    mixed = train(cfg.replace(**{**over, "run.out": str(tmp_path / "mixed")}), DATA)
    assert mixed["sent_bytes_per_worker"] == plain["sent_bytes_per_worker"]  # everything sent stays fp32
    a = torch.load(tmp_path / "fp32" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "mixed" / "model.pt", weights_only=True)
    assert all(b[k].dtype == a[k].dtype for k in a) and all(torch.isfinite(b[k].float()).all() for k in b)
    if "run.amp" in over:
        assert any(not torch.equal(a[k], b[k]) for k in a)  # autocast did run in lower precision
    rows = {k: [json.loads(line)["loss"] for line in (tmp_path / k / "metrics.jsonl").read_text().splitlines()]
            for k in ("fp32", "mixed")}
    assert rows["mixed"][-1] < rows["mixed"][0] and rows["mixed"][-1] == pytest.approx(rows["fp32"][-1], rel=0.1)


def test_outer_step_on_the_shared_layers_only_leaves_the_blocks_plainly_averaged(tmp_path):
    """--no-outer-blocks: after a round the shared layers are those of the outer-step run and the blocks
    those of plain ResIST (one holder each: the holder's copy, unstepped); no outer momentum travels, so
    every partitioned round sends exactly plain ResIST's bytes, and fewer than with the blocks stepped."""
    outer = {"algo.outer_lr": 1.0, "algo.outer_momentum": 0.5}
    cfg = tiny(**{"algo.workers": 2, "optim.epochs": 2})
    runs = {name: trained(cfg.replace(**over), tmp_path / name)
            for name, over in (("plain", {}), ("outer", outer), ("shared", {**outer, "algo.outer_blocks": False}))}
    once = {name: trained(cfg.replace(**{"run.max_rounds": 1, **over}), tmp_path / f"{name}1")
            for name, over in (("plain", {}), ("outer", outer), ("shared", {**outer, "algo.outer_blocks": False}))}
    state = {n: torch.load(p / "model.pt", weights_only=True) for n, p in once.items()}
    blocks = {int(b) for b in json.loads((once["plain"] / "summary.json").read_text())["scaled_blocks"]}
    in_block = lambda k: k.startswith("blocks.") and int(k.split(".")[1]) in blocks  # noqa: E731
    params = [k for k in state["plain"] if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(state["shared"][k], state["plain"][k]) for k in params if in_block(k))
    assert all(torch.equal(state["shared"][k], state["outer"][k]) for k in params if not in_block(k))
    assert any(not torch.equal(state["outer"][k], state["plain"][k]) for k in params if in_block(k))
    sent = {n: _sent_per_round(p) for n, p in runs.items()}
    assert sent["shared"] == sent["plain"] and sum(sent["shared"]) < sum(sent["outer"])


def test_outer_blocks_off_needs_resist_with_an_outer_step():
    with pytest.raises(ValueError, match="needs an outer step"):
        tiny(**{"algo.outer_blocks": False})
    with pytest.raises(ValueError, match="needs an outer step"):
        tiny(**{"algo.name": "local_sgd", "algo.outer_lr": 0.7, "algo.outer_blocks": False})
