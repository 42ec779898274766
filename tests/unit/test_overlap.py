"""Overlapped ResIST (``--overlap TAU``, docs/streaming.md) against a reference written out here by hand
from the rule: whole-model copies per worker; at the end of a round (not the last) every part's average
over its holders is taken as it is then, and lands tau steps into the next round: incoming blocks
(held now, not before) are skipped until then and take the average, the shared layers and the blocks a
worker held with others and keeps become average + alpha (live - average), a block's sole holder keeps
its own. The last round averages at once. The final global models must be bitwise equal. Also: tau = 0,
alpha = 0 is blocking ResIST bit for bit (weights, statistics, bytes); when the merge happens; exact
resume; the non-blocking exchange in-process; bad combinations in one line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resist.algorithms.parts import init_model
from resist.cli import main
from resist.comm import run_in_process
from resist.data import BatchStream, load_dataset
from resist.faults import InjectedFault
from resist.models import create_model
from resist.plan import candidate_blocks, make_plan
from resist.presets import preset
from resist.train import checkpoint, train
from resist.train.optim import add_parameters, make_optimizer, train_step
from resist.train.trainer import build_algorithm

DATA = load_dataset("synthetic", n_train=256, n_test=64, num_classes=4, size=12)


def config(out, **over):
    base = {"model.layers": (1, 1, 5, 1), "data.batch_size": 16, "optim.epochs": 4, "algo.local_iters": 4,
            "algo.workers": 2, "run.max_rounds": 2, "run.eval_every": 100, "run.timeout": 60, "run.out": str(out)}
    return preset("smoke").replace(**{**base, **over})


def _mean(copies):
    """Sum in rank order, then divide by the count (integers floor-divide); one copy is copied exactly."""
    total = copies[0].clone()
    for c in copies[1:]:
        total += c
    if len(copies) == 1:
        return total
    return total / len(copies) if total.is_floating_point() else total // len(copies)


def _block(key: str):
    name = key.removeprefix("momentum/")
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


def reference(cfg) -> dict[str, torch.Tensor]:
    """The global model after ``cfg.run.max_rounds`` overlapped rounds, from whole-model copies."""
    a, o, s = cfg.algo, cfg.optim, cfg.algo.workers
    H, tau, alpha, delta = a.local_iters, a.overlap, a.mix_alpha, a.overlap_merge == "delta"
    ahead = a.prefetch  # blocks that change holders leave tau steps early; their last steps follow
    models = [init_model(create_model(cfg.model.name, num_classes=4, width=cfg.model.width,
                                      layers=cfg.model.layers), cfg.run.seed) for _ in range(s)]
    cands = candidate_blocks(models[0].partitionable, models[0].skippable, "section3")
    streams = [BatchStream(DATA.train, DATA.mean, DATA.std, s, k, cfg.data.batch_size, cfg.run.seed) for k in range(s)]
    total = math.ceil(o.epochs * (len(DATA.train.y) // s // cfg.data.batch_size))
    rounds = min(math.ceil(total / H), cfg.run.max_rounds)
    lr_of = lambda step: o.lr * 0.1 ** sum(step >= math.ceil(f * total) for f in o.lr_decay_at)  # noqa: E731
    momentum = [{n: torch.zeros_like(p) for n, p in m.named_parameters()} for m in models]
    everyone = tuple(range(s))

    def state(k):  # every tensor of worker k that synchronization averages, by name
        return {**models[k].state_dict(), **({f"momentum/{n}": t for n, t in momentum[k].items()}
                                             if a.carry_momentum else {})}

    def holders_of(r):
        plan = make_plan(cfg.run.seed, r, s, cands, a.min_depth)
        return {b: plan.holders(b) for b in cands}

    landing = None  # (the averages, the holders they were taken over) in flight into this round
    for r in range(rounds):
        holders = holders_of(r)
        held = lambda key, k: k in holders.get(_block(key), everyone)  # noqa: E731
        # Skipped params stay in the optimizer with no gradient: SGD passes over them, and their state
        # starts at their first step (fresh, or the carried momentum set below).
        opts = [torch.optim.SGD(m.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
                for m in models]
        if a.carry_momentum:
            for m, opt, mom in zip(models, opts, momentum):
                for n, p in m.named_parameters():
                    opt.state[p]["momentum_buffer"] = mom[n]
        incoming = [set() for _ in models]
        if landing is not None:
            incoming = [{b for b in cands if k in holders[b] and k not in landing[1][b]} for k in range(s)]
        for k, m in enumerate(models):
            m.skip = frozenset(b for b in cands if k not in holders[b]) | (set() if ahead else incoming[k])
            m.train()
            if ahead and landing is not None:  # prefetched: they train from step 0, from the early average
                with torch.no_grad():
                    for key, t in state(k).items():
                        if _block(key) in incoming[k]:
                            t.copy_(landing[3][key])

        def land():
            avg, before, sent = landing[:3]
            with torch.no_grad():
                for k, m in enumerate(models):
                    for key, t in state(k).items():
                        b = _block(key) if _block(key) in before else None  # a dealt block, or None: shared
                        if not held(key, k) or (b is not None and before[b] == (k,)):
                            continue  # not trained this round, or kept by its sole holder
                        if ahead and b in incoming[k]:  # the holders' steps since the early send
                            t.add_(landing[4][key])
                        elif b in incoming[k] or not t.is_floating_point() or (alpha == 0 and not delta):
                            t.copy_(avg[key])
                        elif delta:  # the average plus this worker's steps since it sent
                            t.copy_(avg[key] + (t - sent[k][key]))
                        else:
                            t.copy_(avg[key] + (t - avg[key]) * alpha)
                    m.skip = frozenset(b for b in cands if k not in holders[b])

        if landing is not None and tau == 0:
            land()
        snap = None
        for c in range(1, min(H, total - r * H) + 1):
            step = r * H + c - 1
            for k, (m, opt) in enumerate(zip(models, opts)):
                for g in opt.param_groups:
                    g["lr"] = lr_of(step)
                opt.zero_grad()
                x, y = streams[k].batch(step)
                F.cross_entropy(m(x), y).backward()
                opt.step()
            if landing is not None and c == tau:
                land()
                if a.overlap_restart:  # momentum restarts at the merge, as blocking ResIST's at its average
                    opts = [torch.optim.SGD(m.parameters(), lr=o.lr, momentum=o.momentum,
                                            weight_decay=o.weight_decay) for m in models]
            if ahead and c == max(H - tau, tau) and r < rounds - 1:  # tau before the end, not before the merge
                snap = [{key: v.clone() for key, v in state(k).items()} for k in range(s)]
        with torch.no_grad():  # every tensor's average over this round's holders, as it is now
            states = [state(k) for k in range(s)]
            avg = {key: _mean([states[h][key] for h in holders.get(_block(key), everyone)]) for key in states[0]}
            sent = [{key: v.clone() for key, v in st.items()} for st in states]
            early, change = {}, {}
            if snap is not None:  # per block: the holders' early average, and their average change since
                for key in states[0]:
                    if _block(key) in holders:
                        hs = holders[_block(key)]
                        early[key] = _mean([snap[h][key] for h in hs])
                        change[key] = _mean([states[h][key] - snap[h][key] for h in hs])
        landing = (avg, holders, sent, early, change)
    return {k: v for k, v in landing[0].items() if not k.startswith("momentum/")}  # the last round: at once


def trained(cfg) -> dict[str, torch.Tensor]:
    train(cfg, DATA)
    return torch.load(cfg.run.out + "/model.pt", weights_only=True)


CASES = {
    "S=2 tau=2 alpha=0": {"algo.overlap": 2},
    "S=2 tau=1 alpha=0.5": {"algo.overlap": 1, "algo.mix_alpha": 0.5},
    "S=2 tau=3 alpha=0.25, 3 rounds": {"algo.overlap": 3, "algo.mix_alpha": 0.25, "run.max_rounds": 3},
    # 2 workers, 4 blocks, 3 each: 2 blocks held by both (all-reduced) and merged with alpha by a keeper.
    "S=2 min depth 3 tau=2 alpha=0.5, 3 rounds": {"algo.min_depth": 3, "algo.overlap": 2, "algo.mix_alpha": 0.5,
                                                  "run.max_rounds": 3},
    # 3 workers, 2 blocks each of 4: blocks held by two, averaged from the point-to-point copies.
    "S=3 min depth 2 tau=1 alpha=0.5, 3 rounds": {"algo.workers": 3, "algo.min_depth": 2, "algo.overlap": 1,
                                                  "algo.mix_alpha": 0.5, "run.max_rounds": 3},
    "S=2 tau=2 delta, 3 rounds": {"algo.overlap": 2, "algo.overlap_merge": "delta", "run.max_rounds": 3},
    "S=3 min depth 2 tau=1 delta, 3 rounds": {"algo.workers": 3, "algo.min_depth": 2, "algo.overlap": 1,
                                              "algo.overlap_merge": "delta", "run.max_rounds": 3},
    "S=2 tau=2 delta carried momentum": {"algo.overlap": 2, "algo.overlap_merge": "delta",
                                         "algo.carry_momentum": True, "run.max_rounds": 3},
    "S=2 tau=2 alpha=0.5 carried momentum": {"algo.overlap": 2, "algo.mix_alpha": 0.5, "algo.carry_momentum": True,
                                             "run.max_rounds": 3},
    "S=2 tau=2 prefetch delta, 3 rounds": {"algo.overlap": 2, "algo.prefetch": True, "algo.overlap_merge": "delta",
                                           "run.max_rounds": 3},
    "S=2 tau=1 prefetch alpha=0.5, 3 rounds": {"algo.overlap": 1, "algo.prefetch": True, "algo.mix_alpha": 0.5,
                                               "run.max_rounds": 3},
    # Blocks with two holders: incoming ones average two early copies and two deltas; kept ones merge.
    "S=3 min depth 2 tau=1 prefetch delta, 3 rounds": {"algo.workers": 3, "algo.min_depth": 2, "algo.overlap": 1,
                                                       "algo.prefetch": True, "algo.overlap_merge": "delta",
                                                       "run.max_rounds": 3},
    # tau = 3 of 4: the blocks leave right after the round's own merge, one step before its end.
    "S=2 tau=3 prefetch delta, 3 rounds": {"algo.overlap": 3, "algo.prefetch": True, "algo.overlap_merge": "delta",
                                           "run.max_rounds": 3},
    "S=2 min depth 3 tau=2 prefetch carried momentum": {"algo.min_depth": 3, "algo.overlap": 2, "algo.prefetch": True,
                                                        "algo.mix_alpha": 0.5, "algo.carry_momentum": True,
                                                        "run.max_rounds": 3},
    # Momentum restarts at the merge: the arrivals and the kept parts start from fresh buffers.
    "S=2 tau=2 delta restart, 3 rounds": {"algo.overlap": 2, "algo.overlap_merge": "delta",
                                          "algo.overlap_restart": True, "run.max_rounds": 3},
    # The ablation between blocking ResIST and tau ("erase"): the steps before the merge leave nothing behind
    # in the merged weights (alpha 0) nor in the momentum (restarted).
    "S=2 tau=1 alpha=0 restart, 3 rounds": {"algo.overlap": 1, "algo.overlap_restart": True, "run.max_rounds": 3},
    "S=3 min depth 2 tau=1 prefetch alpha=0.5 restart, 3 rounds": {
        "algo.workers": 3, "algo.min_depth": 2, "algo.overlap": 1, "algo.prefetch": True, "algo.mix_alpha": 0.5,
        "algo.overlap_restart": True, "run.max_rounds": 3},
}


@pytest.mark.parametrize("case", list(CASES))
def test_library_equals_the_hand_written_reference_bitwise(case, tmp_path):
    cfg = config(tmp_path, **CASES[case])
    got, ref = trained(cfg), reference(cfg)
    assert got.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not differ, f"{len(differ)} tensors differ, first {differ[0]}"


def test_the_reference_depends_on_overlap_and_mixing():
    """Guards the test above: tau, alpha and the delta merge change the result."""
    a = reference(config("unused", **{"algo.overlap": 0}))
    b = reference(config("unused", **{"algo.overlap": 2}))
    c = reference(config("unused", **{"algo.overlap": 2, "algo.mix_alpha": 0.5}))
    d = reference(config("unused", **{"algo.overlap": 2, "algo.overlap_merge": "delta"}))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert any(not torch.equal(b[k], c[k]) for k in b if b[k].is_floating_point())
    assert all(any(not torch.equal(d[k], x[k]) for k in d if d[k].is_floating_point()) for x in (b, c))
    e = reference(config("unused", **{"algo.overlap": 2, "algo.overlap_merge": "delta", "algo.overlap_restart": True}))
    assert any(not torch.equal(d[k], e[k]) for k in d if d[k].is_floating_point())
    e = reference(config("unused", **{"algo.overlap": 2, "algo.overlap_merge": "delta", "algo.prefetch": True}))
    assert any(not torch.equal(d[k], e[k]) for k in d if d[k].is_floating_point())


def test_prefetched_blocks_train_from_step_0_and_cross_the_link_twice(tmp_path):
    """--prefetch: no block is skipped for want of its transfer, and a round (but the last) sends, on top
    of the overlapped round's bytes, each block that changes holders once more (early, then its delta):
    the extra bytes are exactly those of the early messages that the routes name."""
    from resist.algorithms.overlap import early
    from resist.algorithms.routing import route

    over = {"algo.overlap": 2, "algo.overlap_merge": "delta", "run.max_rounds": 3}
    plain = train(config(tmp_path / "plain", **over), DATA)
    ahead = train(config(tmp_path / "ahead", **over, **{"algo.prefetch": True}), DATA)
    cfg = config("unused", **over)
    model = create_model(cfg.model.name, num_classes=4, width=cfg.model.width, layers=cfg.model.layers)
    cands = candidate_blocks(model.partitionable, model.skippable, "section3")
    size = {b: sum(t.numel() * t.element_size() for t in model.blocks[b].state_dict().values()) for b in cands}
    extra = [0, 0]
    for r in range(2):  # rounds 0 and 1 prefetch for rounds 1 and 2; the last round has no next one
        cur, nxt = [{b: make_plan(cfg.run.seed, q, 2, cands, 0).holders(b) for b in cands} for q in (r, r + 1)]
        for k in range(2):
            extra[k] += sum(size[b] for _, b in early(route(cur, nxt, k, 2), cur)[0])
    assert min(extra) > 0
    assert [a - p for a, p in zip(ahead["sent_bytes_per_worker"], plain["sent_bytes_per_worker"])] == extra


BLOCKING = {
    "S=2": {},
    "S=2 min depth 3": {"algo.min_depth": 3},
    "S=3 min depth 2": {"algo.workers": 3, "algo.min_depth": 2},
    "S=3 carried momentum": {"algo.workers": 3, "algo.carry_momentum": True},
    "S=2 short last round": {"optim.epochs": 2, "run.max_rounds": None, "algo.local_iters": 6},
    # Stopped at the first evaluation (round 0), its transfers to round 1 in flight: model.pt waits for them.
    "S=2 stopped at a target": {"run.stop_at": 0.0, "run.max_rounds": 4},
    # Compressed: the same coded all-reduces and exchanges, run behind the round (a block's sole holder that
    # keeps it takes its own copy as the others decode it, as blocking ResIST does).
    "S=2 q8": {"algo.compress": "q8"},
    "S=2 min depth 3 q4": {"algo.min_depth": 3, "algo.compress": "q4"},
    "S=3 min depth 2 q8": {"algo.workers": 3, "algo.min_depth": 2, "algo.compress": "q8"},
    "S=3 topk carried momentum": {"algo.workers": 3, "algo.compress": "topk", "algo.carry_momentum": True},
}


@pytest.mark.parametrize("case", list(BLOCKING))
def test_no_overlap_no_mixing_is_blocking_resist_bitwise(tmp_path, case):
    """tau = 0, alpha = 0: everything lands before step 0, so the weights, BatchNorm statistics and bytes
    are blocking ResIST's, bit for bit (with an evaluation every round, which waits for the transfers)."""
    over = {**BLOCKING[case], "run.max_rounds": BLOCKING[case].get("run.max_rounds", 3), "run.eval_every": 1}
    s = train(config(tmp_path / "o", **over, **{"algo.overlap": 0}), DATA)
    b = train(config(tmp_path / "b", **over), DATA)
    x = torch.load(tmp_path / "o" / "model.pt", weights_only=True)
    y = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert s["sent_bytes_per_worker"] == b["sent_bytes_per_worker"]
    assert s["recv_bytes_per_worker"] == b["recv_bytes_per_worker"]
    assert s["final_acc"] == b["final_acc"] and s["rounds"] == b["rounds"]


def test_incoming_blocks_are_skipped_until_step_tau_then_join_the_optimizer():
    """Round 1 of tau = 2: the blocks a rank did not hold in round 0 are skipped and out of the optimizer
    for 2 steps, then installed (the holders' average), run and trained; joined() reports them once."""
    cfg = config("unused", **{"algo.overlap": 2, "algo.local_iters": 4})

    def body(comm):
        algo = build_algorithm(comm, cfg, 4, torch.device("cpu"), 8)
        store, model = algo.store, algo.store.model
        algo.start(0)
        seen = []
        for r in range(2):
            algo.begin_round(r)
            opt = make_optimizer(store, cfg.optim)
            for step in range(4):
                x, y = DATA.train_stream(2, comm.rank, 16, 0).batch(r * 4 + step)
                train_step(model, opt, x, y, 0.05, algo.after_backward)
                algo.after_step(r, step)
                joined = algo.joined()
                if joined:
                    add_parameters(opt, store, joined, cfg.optim)
                seen.append((r, step, sorted(model.skip), sorted({int(n.split(".")[1]) for n, _ in joined}),
                             sum(p.numel() for g in opt.param_groups for p in g["params"])))
            algo.end_round(r, final=r == 1)
        return seen, algo.plan(0), algo.plan(1)

    for rank, (seen, p0, p1) in enumerate(run_in_process(2, body)):
        mine = set(p1.assignments[rank])
        incoming = sorted(mine - set(p0.assignments[rank]))
        not_held = sorted(set(p1.candidates) - mine)
        assert incoming, "the plan moves some block to this rank"
        assert [s[1:4] for s in seen if s[0] == 1] == [
            (0, sorted({*not_held, *incoming}), []), (1, not_held, incoming), (2, not_held, []), (3, not_held, [])]
        sizes = [s[4] for s in seen if s[0] == 1]
        assert sizes[0] < sizes[1] == sizes[2] == sizes[3]  # the optimizer grew at step tau


@pytest.mark.parametrize("merge", [{"algo.mix_alpha": 0.5}, {"algo.overlap_merge": "delta"},
                                   {"algo.overlap_merge": "delta", "algo.prefetch": True},
                                   {"algo.mix_alpha": 0.5, "algo.compress": "q4"}],
                         ids=["mix", "delta", "prefetch", "q4"])
def test_resume_is_bitwise(tmp_path, monkeypatch, merge):
    """A checkpoint between overlapped rounds holds the global model (the transfers waited for) and each
    rank's live copies (with the delta merge, also what it sent: the same values at a round's end);
    resumed, the incoming blocks wait for step tau again (prefetched: they start from their early average,
    kept in the checkpoint with their delta): the same bits as a run never interrupted."""
    over = {"algo.overlap": 2, **merge, "algo.carry_momentum": True, "algo.min_depth": 3,
            "run.max_rounds": 4, "run.checkpoint_every": 1}
    whole = train(config(tmp_path / "whole", **over), DATA)
    monkeypatch.setenv("RESIST_FAULTS", "raise:rank=1:round=2:step=9")
    with pytest.raises(InjectedFault):
        train(config(tmp_path / "cut", **over), DATA)
    assert checkpoint.latest(tmp_path / "cut").name == "round_000002.pt"
    monkeypatch.setenv("RESIST_FAULTS", "")
    resumed = train(config(tmp_path / "cut", **over), DATA, resume=True)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["sent_bytes_per_worker"] == resumed["sent_bytes_per_worker"]
    assert whole["final_acc"] == resumed["final_acc"]


@pytest.mark.parametrize("prefetch", [False, True], ids=["overlap", "prefetch"])
def test_checkpoints_and_evaluations_do_not_change_the_bits(tmp_path, prefetch):
    """Waiting for the transfers at an evaluation or a checkpoint leaves the merge at step tau."""
    over = {"algo.overlap": 2, "algo.mix_alpha": 0.5, "run.max_rounds": 3, "algo.prefetch": prefetch}
    train(config(tmp_path / "quiet", **over), DATA)
    train(config(tmp_path / "busy", **over, **{"run.eval_every": 1, "run.checkpoint_every": 1}), DATA)
    a = torch.load(tmp_path / "quiet" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "busy" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exchange_async_in_process_delivers_at_the_wait_and_counts_as_exchange():
    def body(comm):
        peer = 1 - comm.rank
        mine = torch.full((5,), float(comm.rank + 1))
        into = torch.zeros(5)
        pending = comm.exchange_async([(peer, mine.clone())], [(peer, into)])
        before = into.clone()
        pending.wait()
        pending.wait()  # once
        blocking = torch.zeros(5)
        sent = comm.bytes.sent["sync"]
        comm.exchange([(peer, mine)], [(peer, blocking)])
        return before, into, blocking, sent, comm.bytes.sent["sync"] - sent

    for rank, (before, into, blocking, sent, again) in enumerate(run_in_process(2, body)):
        assert torch.equal(before, torch.zeros(5))  # nothing delivered before the wait (in-process)
        assert torch.equal(into, torch.full((5,), float(2 - rank))) and torch.equal(into, blocking)
        assert sent == again == 5 * 4


def test_run_async_in_process_runs_at_the_wait_under_the_tag_it_was_started_with():
    def body(comm):
        peer, into = 1 - comm.rank, torch.zeros(5)
        with comm.tag("background"):
            pending = comm.run_async(lambda: comm.exchange([(peer, torch.full((5,), float(comm.rank + 1)))],
                                                           [(peer, into)]))
        before = into.clone()
        pending.wait()
        return before, into, comm.bytes.sent["background"], comm.bytes.sent["sync"]

    for rank, (before, into, tagged, sync) in enumerate(run_in_process(2, body)):
        assert torch.equal(before, torch.zeros(5)) and torch.equal(into, torch.full((5,), float(2 - rank)))
        assert tagged == 5 * 4 and sync == 0


BAD = {
    "overlap with local SGD": (["--algo", "local_sgd", "--overlap", "1"], "--overlap hides ResIST's transfers"),
    "overlap not below H": (["--local-iters", "4", "--overlap", "4"], "overlap 4 must be below local_iters 4"),
    "negative overlap": (["--overlap", "-1"], "overlap must be >= 0"),
    "mixing without overlap": (["--mix-alpha", "0.5"], "add --overlap TAU"),
    "delta merge without overlap": (["--overlap-merge", "delta"], "add --overlap TAU, or drop --overlap-merge"),
    "delta merge with alpha": (["--overlap", "1", "--overlap-merge", "delta", "--mix-alpha", "0.5"],
                               "--overlap-merge delta keeps every local step: drop --mix-alpha"),
    "unknown merge": (["--overlap", "1", "--overlap-merge", "avg"], "overlap_merge must be 'mix' or 'delta'"),
    "compressed updates": (["--overlap", "1", "--compress", "q8", "--compress-what", "update"],
                           "use --compress-what weights"),
    "prefetch with a codec": (["--overlap", "1", "--prefetch", "--compress", "q8"], "drop --compress or --prefetch"),
    "outer optimizer": (["--overlap", "1", "--outer-lr", "0.7"], "--outer-lr/--outer-momentum does not go with --overlap"),
    "warm-up": (["--overlap", "1", "--warmup-epochs", "1"], "--warmup-epochs does not go with --overlap"),
    "elastic": (["--overlap", "1", "--runtime", "elastic"], "--overlap does not go with elastic training"),
    "prefetch without overlap": (["--prefetch"], "add --overlap TAU, or drop --prefetch"),
    "prefetch with tau 0": (["--overlap", "0", "--prefetch"], "it needs --overlap 1 or more"),
    "restart without overlap": (["--overlap-restart"], "add --overlap TAU, or drop it"),
    "restart with carried momentum": (["--overlap", "1", "--overlap-restart", "--carry-momentum"],
                                      "--overlap-restart restarts the momentum that --carry-momentum carries"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_one_line_exit_2(capsys, tmp_path, case):
    args, message = BAD[case]
    rc = main(["train", "smoke", "--dataset", "synthetic", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


def test_aligned_buckets_give_the_same_bits(tmp_path, monkeypatch):
    """CUDA's 128-byte aligned buckets (forced on the CPU here): the copies in flight, the receive buffers
    and a checkpoint's live copies are laid out as the buckets, padding included, with the same bits."""
    from resist.algorithms import parts

    over = {"algo.overlap": 2, "algo.mix_alpha": 0.5, "algo.min_depth": 3, "algo.carry_momentum": True,
            "run.max_rounds": 3, "run.checkpoint_every": 1}
    tight = trained(config(tmp_path / "tight", **over))
    monkeypatch.setattr(parts, "alignment", lambda device: 128)
    aligned = trained(config(tmp_path / "aligned", **over))
    assert all(torch.equal(tight[k], aligned[k]) for k in tight)
