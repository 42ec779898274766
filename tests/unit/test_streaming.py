"""Streaming DiLoCo (``--algo streaming_diloco``) against a reference written out here by hand: whole
model copies per worker, the staggered schedule (fragment f sent after (f+1) H/F - tau steps of a round,
merged after (f+1) H/F), the average of the two workers' copies taken when the fragment is sent, the
outer step from the fragment's global parameters, then live <- global + alpha (live - global). The
final global models must be bitwise equal. Also: tau = 0, alpha = 0, F = 1 is DiLoCo bit for bit; the
schedule's calls; exact resume; bad combinations in one line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resist.algorithms.parts import init_model
from resist.algorithms.streaming import fragments_of, model_parts
from resist.cli import main
from resist.comm import run_in_process
from resist.presets import preset
from resist.data import BatchStream, load_dataset
from resist.faults import InjectedFault
from resist.models import create_model
from resist.train import checkpoint, train
from resist.train.optim import make_optimizer, train_step
from resist.train.trainer import build_algorithm

DATA = load_dataset("synthetic", n_train=256, n_test=64, num_classes=4, size=12)


def config(out, **over):
    base = {"model.layers": (1, 1, 5, 1), "data.batch_size": 16, "optim.epochs": 4, "algo.local_iters": 4,
            "algo.workers": 2, "algo.name": "streaming_diloco", "run.max_rounds": 3, "run.eval_every": 100,
            "run.timeout": 60, "run.out": str(out)}
    return preset("smoke").replace(**{**base, **over})


def _mean(copies):
    """Rank-order sum, then divide by the count (integers floor-divide), as both runtimes average."""
    total = copies[0].clone()
    for c in copies[1:]:
        total += c
    return total / len(copies) if total.is_floating_point() else total // len(copies)


def _part_of(key: str):
    head, _, rest = key.partition(".")
    return int(rest.split(".")[0]) if head == "blocks" else head


def reference(cfg) -> dict[str, torch.Tensor]:
    """The global model after ``cfg.run.max_rounds`` rounds (or the whole schedule), from whole-model
    copies. A short last round sends, at its end, the fragments its steps did not reach."""
    a, o, s = cfg.algo, cfg.optim, cfg.algo.workers
    H, n_frag, tau, alpha = a.local_iters, a.fragments, a.sync_delay, a.mix_alpha
    build = lambda: create_model(cfg.model.name, num_classes=4, width=cfg.model.width,  # noqa: E731
                                 layers=cfg.model.layers)
    models = [init_model(build(), cfg.run.seed) for _ in range(s)]
    streams = [BatchStream(DATA.train, DATA.mean, DATA.std, s, k, cfg.data.batch_size, cfg.run.seed) for k in range(s)]
    spe = len(DATA.train.y) // s // cfg.data.batch_size
    total = math.ceil(o.epochs * spe)
    rounds = min(cfg.run.max_rounds or math.inf, math.ceil(total / H))
    lr_of = lambda step: o.lr * 0.1 ** sum(step >= math.ceil(f * total) for f in o.lr_decay_at)  # noqa: E731

    parts = model_parts(models[0])
    sizes = [sum(p.numel() for p in (models[0].blocks[q] if isinstance(q, int) else getattr(models[0], q)).parameters())
             for q in parts]
    frag_of_part = {q: f for f, (lo, hi) in enumerate(fragments_of(sizes, n_frag)) for q in parts[lo:hi]}
    keys = list(models[0].state_dict())
    frag_keys = [[k for k in keys if frag_of_part[_part_of(k)] == f] for f in range(n_frag)]
    param_names = {n for n, _ in models[0].named_parameters()}
    momentum = [{n: torch.zeros_like(p) for n, p in m.named_parameters()} for m in models]
    glob = {k: v.clone() for k, v in models[0].state_dict().items()}  # every copy starts equal
    glob_momentum = {n: v.clone() for n, v in momentum[0].items()}
    outer = {n: torch.zeros_like(p) for n, p in models[0].named_parameters()}
    period = H // n_frag
    send_at = [(f + 1) * period - tau for f in range(n_frag)]
    merge_at = [(f + 1) * period for f in range(n_frag)]
    sent: dict[int, tuple[dict, dict]] = {}

    for r in range(int(rounds)):
        opts = [torch.optim.SGD(m.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
                for m in models]
        if a.carry_momentum:
            for m, opt, mom in zip(models, opts, momentum):
                for n, p in m.named_parameters():
                    opt.state[p]["momentum_buffer"] = mom[n]
        for m in models:
            m.train()
        n_steps = min(H, total - r * H)
        for c in range(1, n_steps + 1):
            step = r * H + c - 1
            for k, (m, opt) in enumerate(zip(models, opts)):
                for g in opt.param_groups:
                    g["lr"] = lr_of(step)
                opt.zero_grad()
                x, y = streams[k].batch(step)
                F.cross_entropy(m(x), y).backward()
                opt.step()
            ends = c == n_steps < H  # a short last round: what its steps did not reach happens at its end
            with torch.no_grad():
                states = [m.state_dict() for m in models]
                for f in range(n_frag):
                    if send_at[f] == c or (ends and send_at[f] > c):  # the average as it is now; it lands tau steps later
                        avg = {k: _mean([st[k] for st in states]) for k in frag_keys[f]}
                        avg_m = ({k: _mean([mom[k] for mom in momentum]) for k in frag_keys[f] if k in param_names}
                                 if a.carry_momentum else {})
                        sent[f] = (avg, avg_m)
                for f in range(n_frag):
                    if merge_at[f] != c and not (ends and f in sent):
                        continue
                    avg, avg_m = sent.pop(f)
                    for k in frag_keys[f]:
                        if k in param_names and a.outer:
                            g = glob[k] - avg[k]
                            outer[k].mul_(a.outer_momentum).add_(g)
                            glob[k] = glob[k] - a.outer_lr * (g + a.outer_momentum * outer[k] if a.outer_nesterov
                                                              else outer[k])
                        else:
                            glob[k] = avg[k].clone()
                        for st in states:
                            if alpha == 0 or not st[k].is_floating_point():
                                st[k].copy_(glob[k])
                            else:
                                st[k].copy_(glob[k] + (st[k] - glob[k]) * alpha)
                        if k in avg_m:
                            glob_momentum[k] = avg_m[k].clone()
                            for mom in momentum:
                                mom[k].copy_(glob_momentum[k] if alpha == 0 else
                                             glob_momentum[k] + (mom[k] - glob_momentum[k]) * alpha)
    assert not sent
    return glob


def trained(cfg) -> dict[str, torch.Tensor]:
    train(cfg, DATA)
    return torch.load(cfg.run.out + "/model.pt", weights_only=True)


CASES = {
    "F=3 tau=1 alpha=0.5 outer Nesterov": {"algo.local_iters": 6, "algo.fragments": 3, "algo.sync_delay": 1,
                                           "algo.mix_alpha": 0.5, "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},
    "F=2 tau=0 alpha=0 plain averaging": {"algo.fragments": 2},
    "F=2 tau=1 alpha=0.25 plain outer momentum, carried momentum": {
        "algo.fragments": 2, "algo.sync_delay": 1, "algo.mix_alpha": 0.25, "algo.outer_lr": 0.5,
        "algo.outer_momentum": 0.5, "algo.outer_nesterov": False, "algo.carry_momentum": True},
    "F=4 tau=1 alpha=0 outer Nesterov": {"algo.local_iters": 8, "algo.fragments": 4, "algo.sync_delay": 1,
                                         "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},
    # 16 steps in rounds of 6, 6 and 4: the last round's end sends and merges the third fragment.
    "short last round, F=3 tau=1 alpha=0.5": {"optim.epochs": 2, "run.max_rounds": None, "algo.local_iters": 6,
                                              "algo.fragments": 3, "algo.sync_delay": 1, "algo.mix_alpha": 0.5,
                                              "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},
}


@pytest.mark.parametrize("case", list(CASES))
def test_library_equals_the_hand_written_reference_bitwise(case, tmp_path):
    cfg = config(tmp_path, **CASES[case])
    got, ref = trained(cfg), reference(cfg)
    assert got.keys() == ref.keys()
    differ = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not differ, f"{len(differ)} tensors differ, first {differ[0]}"


def test_the_reference_depends_on_delay_and_mixing():
    """Guards the test above: tau and alpha change the result."""
    base = {"algo.local_iters": 6, "algo.fragments": 3, "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9}
    a = reference(config("unused", **base))
    b = reference(config("unused", **base, **{"algo.sync_delay": 1}))
    c = reference(config("unused", **base, **{"algo.sync_delay": 1, "algo.mix_alpha": 0.5}))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert any(not torch.equal(b[k], c[k]) for k in b if b[k].is_floating_point())


@pytest.mark.parametrize("outer", [{}, {"algo.outer_lr": 0.7, "algo.outer_momentum": 0.9}])
def test_one_fragment_no_delay_no_mixing_is_local_sgd_bitwise(tmp_path, outer):
    """F = 1, tau = 0, alpha = 0 is DiLoCo (with the outer optimizer) or local SGD (without): the same
    weights, BatchNorm statistics and bytes, bit for bit."""
    s = train(config(tmp_path / "s", **outer), DATA)
    l_ = train(config(tmp_path / "l", **{**outer, "algo.name": "local_sgd"}), DATA)
    a = torch.load(tmp_path / "s" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "l" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert s["sent_bytes_per_worker"] == l_["sent_bytes_per_worker"]
    assert s["recv_bytes_per_worker"] == l_["recv_bytes_per_worker"]
    assert s["final_acc"] == l_["final_acc"]


def test_fragments_are_contiguous_nonempty_and_balanced():
    assert fragments_of([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert fragments_of([5], 1) == [(0, 1)]
    assert fragments_of([1, 10, 10, 10, 1], 3) == [(0, 2), (2, 3), (3, 5)]
    assert fragments_of([100, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]  # never empty
    cuts = fragments_of(list(range(1, 13)), 4)
    assert [c[0] for c in cuts[1:]] == [c[1] for c in cuts[:-1]] and cuts[0][0] == 0 and cuts[-1][1] == 12
    with pytest.raises(ValueError):
        fragments_of([1, 2], 3)


def test_the_schedule_sends_and_merges_each_fragment_once_per_round():
    """Which all-reduces start after which step, and when they are waited for: fragment f's after
    (f+1) H/F - tau completed steps, its wait after (f+1) H/F (the last in end_round); its bytes on 'sync'."""
    cfg = config("unused", **{"algo.local_iters": 6, "algo.fragments": 3, "algo.sync_delay": 1})

    def body(comm):
        algo = build_algorithm(comm, cfg, 4, torch.device("cpu"), 8)
        events, done = [], [0]
        real = comm.all_reduce_async

        def started(t, average=False):
            pending = real(t, average)
            events.append(("start", done[0], t.numel()))
            finish = pending._finish

            def wait():
                events.append(("wait", done[0], t.numel()))
                finish()
            pending._finish = wait
            return pending

        comm.all_reduce_async = started
        algo.start(0)
        store = algo.store
        algo.begin_round(0)
        opt = make_optimizer(store, cfg.optim)
        for step in range(6):
            x, y = DATA.train_stream(2, comm.rank, 16, 0).batch(step)
            train_step(store.model, opt, x, y, 0.05, algo.after_backward)
            done[0] = step + 1
            algo.after_step(0, step)
        before = comm.bytes.sent["sync"]
        algo.end_round(0)
        sizes = [sum(f.numel() for f in store.flats[k][:1]) for k in algo.keys]
        return events, sizes, before, comm.bytes.sent["sync"], [len(p) for p in algo.fragments]

    events, sizes, before, after, lengths = run_in_process(2, body)[0]
    floats = [e for e in events if e[2] in sizes]
    assert [(kind, when) for kind, when, _ in floats] == [("start", 1), ("wait", 2), ("start", 3), ("wait", 4),
                                                           ("start", 5), ("wait", 6)]
    assert [n for _, _, n in floats[::2]] == sizes
    assert sum(lengths) == 1 + 8 + 1  # stem, 8 blocks, head: every part in exactly one fragment
    assert after > before > 0  # the last fragment's bytes, counted at its wait here (in-process), on 'sync'


def test_resume_is_bitwise(tmp_path, monkeypatch):
    """Checkpoints are written at round ends, where nothing is in flight; each rank's live weights (which
    differ between workers) travel in the checkpoint's rank state, the global model in its model."""
    over = {"algo.local_iters": 6, "algo.fragments": 3, "algo.sync_delay": 1, "algo.mix_alpha": 0.5,
            "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9, "algo.carry_momentum": True,
            "run.max_rounds": 4, "run.checkpoint_every": 1}
    whole = train(config(tmp_path / "whole", **over), DATA)
    monkeypatch.setenv("RESIST_FAULTS", "raise:rank=1:round=2:step=14")
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


BAD = {
    "delay not below H/F": (["--algo", "streaming_diloco", "--local-iters", "4", "--fragments", "2",
                             "--sync-delay", "2"], "sync_delay 2 must be below local_iters / fragments = 2"),
    "H not a multiple of F": (["--algo", "streaming_diloco", "--local-iters", "5", "--fragments", "2"],
                              "must be a multiple of fragments"),
    "more fragments than parts": (["--algo", "streaming_diloco", "--local-iters", "40", "--fragments", "20"],
                                  "--fragments 20 is more than the model's"),
    "alpha 1": (["--algo", "streaming_diloco", "--mix-alpha", "1"], "mix_alpha must be in [0, 1)"),
    "alpha negative": (["--algo", "streaming_diloco", "--mix-alpha", "-0.1"], "mix_alpha must be in [0, 1)"),
    "fragments with local SGD": (["--algo", "local_sgd", "--fragments", "2"], "are Streaming DiLoCo's"),
    "delay with ResIST": (["--algo", "resist", "--sync-delay", "1"], "are Streaming DiLoCo's"),
    "compression": (["--algo", "streaming_diloco", "--compress", "q8"], "compression is implemented for"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_one_line_exit_2(capsys, tmp_path, case):
    args, message = BAD[case]
    rc = main(["train", "smoke", "--dataset", "synthetic", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


def test_bad_combinations_are_value_errors():
    with pytest.raises(ValueError, match="sync_delay 3 must be below"):
        config("x", **{"algo.fragments": 2, "algo.sync_delay": 3})
    with pytest.raises(ValueError, match="mix_alpha"):
        config("x", **{"algo.mix_alpha": 1.5})
    with pytest.raises(ValueError, match="Streaming DiLoCo's"):
        config("x", **{"algo.name": "local_sgd", "algo.mix_alpha": 0.5})


def test_aligned_buckets_give_the_same_bits(tmp_path, monkeypatch):
    """CUDA's 128-byte aligned buckets (forced on the CPU here) put zero padding between the views: the
    outer step, the mixing and the outer momentum's flat layout leave it zero and the bits unchanged."""
    from resist.algorithms import parts

    over = {"algo.local_iters": 6, "algo.fragments": 3, "algo.sync_delay": 1, "algo.mix_alpha": 0.5,
            "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9, "algo.carry_momentum": True}
    tight = trained(config(tmp_path / "tight", **over))
    monkeypatch.setattr(parts, "alignment", lambda device: 128)
    aligned = trained(config(tmp_path / "aligned", **over))
    assert all(torch.equal(tight[k], aligned[k]) for k in tight)
