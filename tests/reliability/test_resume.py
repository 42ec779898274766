"""Exact resume, lost workers, divergence, and damaged checkpoints (issue: reliability)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from resist.cli import main
from resist.comm import CommError
from resist.presets import preset
from resist.data import load_dataset
from resist.faults import InjectedFault, parse
from resist.train import TrainingError, train
from resist.train import checkpoint

DATA = load_dataset("synthetic", n_train=192, n_test=64, num_classes=4, size=12)


def cfg_for(out, **over):
    return preset("smoke").replace(**{
        "model.layers": (1, 1, 5, 1), "data.batch_size": 8, "algo.local_iters": 2, "algo.workers": 2,
        "run.max_rounds": 6, "run.eval_every": 2, "run.checkpoint_every": 1, "run.timeout": 60,
        "run.out": str(out), **over})


def final(out):
    return torch.load(out / "model.pt", weights_only=True)


def assert_same(a, b, tol=0.0):
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= tol, worst


@pytest.fixture
def faults(monkeypatch):
    def set_(text):
        monkeypatch.setenv("RESIST_FAULTS", text)
    yield set_
    monkeypatch.delenv("RESIST_FAULTS", raising=False)


OUTER = {"algo.outer_lr": 0.7, "algo.outer_momentum": 0.9}


EF = {"algo.compress": "q4", "algo.compress_what": "update", "algo.error_feedback": True}
# A vision transformer with its recipe (AdamW, whose moments restart each round; warm-up and cosine).
VIT = {"model.name": "vit_tiny", "model.layers": None, "model.width": 1 / 16, "optim.inner": "adamw",
       "optim.lr": 1e-3, "optim.weight_decay": 0.05, "optim.lr_schedule": "cosine", "optim.lr_warmup_epochs": 0.5}
# A cool-down of the last 3 of 6 rounds (folded at round 3, where the run is cut) and of the last 4
# (folded at round 2, before the cut), with every state the fold rescales.
COOL3 = {"optim.epochs": 1, "algo.cooldown_epochs": 0.5, **OUTER}
COOL2 = {"optim.epochs": 1, "algo.cooldown_epochs": 0.6, **OUTER}
# Statistics averaged at rounds 4, 8, ...: the checkpoint at round 3 holds every rank's own.
BN4 = {"algo.bn_sync_every": 4}


@pytest.mark.parametrize("algo,carry,extra", [("resist", False, {}), ("resist", True, {}), ("local_sgd", False, {}),
                                              ("data_parallel", False, {}), ("resist", False, OUTER),
                                              ("local_sgd", False, OUTER), ("resist", False, EF),
                                              ("local_sgd", False, EF), ("resist", False, BN4),
                                              ("local_sgd", False, BN4),
                                              ("data_parallel", False, {"algo.compress": "q4", "algo.error_feedback": True}),
                                              ("resist", False, VIT), ("local_sgd", False, VIT),
                                              ("resist", True, COOL3), ("resist", True, COOL2),
                                              ("resist", False, {**OUTER, "algo.outer_blocks": False})])
def test_inprocess_resume_is_bitwise(tmp_path, faults, algo, carry, extra):
    over = {"algo.name": algo, "algo.carry_momentum": carry, "algo.min_depth": 3, **extra}
    whole = train(cfg_for(tmp_path / "whole", **over), DATA)
    faults("raise:rank=1:round=3:step=7")
    with pytest.raises(InjectedFault):
        train(cfg_for(tmp_path / "cut", **over), DATA)
    assert checkpoint.latest(tmp_path / "cut").name == "round_000003.pt"  # only round 3 is lost
    faults("")
    resumed = train(cfg_for(tmp_path / "cut", **over), DATA, resume=True)
    assert_same(final(tmp_path / "whole"), final(tmp_path / "cut"))
    assert resumed["resumed_at_round"] == 3
    assert resumed["sent_bytes_per_worker"] == whole["sent_bytes_per_worker"]
    assert resumed["best_acc"] == whole["best_acc"]
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(6))


def test_keeps_last_k_checkpoints_loadable_weights_only(tmp_path):
    train(cfg_for(tmp_path, **{"run.keep_checkpoints": 2}), DATA)
    names = [p.name for p in checkpoint.all_checkpoints(tmp_path)]
    assert names == ["round_000005.pt", "round_000006.pt"]
    payload = torch.load(checkpoint.latest(tmp_path), weights_only=True)
    assert payload["round"] == 6 and payload["format"] == "resist-checkpoint"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("before,after,stop", [(2, 4, 6), (4, 2, 3)])
def test_resume_with_other_worker_count_keeps_the_schedule_in_epochs(tmp_path, before, after, stop):
    """Stopped after 1 of 2 epochs, resumed with another worker count: exactly the remaining epoch is
    trained, with the learning rate of an uninterrupted run at every round, and the evaluation scale of
    the new worker count."""
    over = {"optim.epochs": 2, "run.max_rounds": None, "run.eval_every": 100}
    whole = train(cfg_for(tmp_path / "whole", **{**over, "algo.workers": after}), DATA)
    train(cfg_for(tmp_path / "cut", **{**over, "algo.workers": before, "run.max_rounds": stop}), DATA)
    resumed = train(cfg_for(tmp_path / "cut", **{**over, "algo.workers": after}), DATA, resume=True)
    ref = {r["round"]: r for r in _rows(tmp_path / "whole")}
    cont = _rows(tmp_path / "cut")[stop:]
    assert cont and cont[0]["epoch"] > 1.0 and cont[-1]["epoch"] == 2.0
    for r in cont:
        assert (r["epoch"], r["lr"], r["step"]) == (ref[r["round"]]["epoch"], ref[r["round"]]["lr"], ref[r["round"]]["step"])
    assert resumed["epochs_trained"] == 2.0 == whole["epochs_trained"]
    assert resumed["resume"] == {"workers_before": before, "epochs_before": 1.0, "resumed_at_epoch": 1.0,
                                 "epochs_after": 1.0}
    assert resumed["eval_scale"] == whole["eval_scale"] and resumed["workers"] == after


def test_resume_point_between_round_boundaries_says_so():
    from resist.train.trainer import Schedule, resume_point_in

    cfg2, cfg4 = (cfg_for("x", **{"optim.epochs": 2, "run.max_rounds": None, "algo.workers": w}) for w in (2, 4))
    saved = {"config": cfg2.to_dict(), "round": 5}  # 10 of 12 steps per epoch: 0.833 epochs
    point = resume_point_in(saved, cfg4, Schedule.of(cfg4, len(DATA.train.y)), len(DATA.train.y))
    assert point.epochs_before == pytest.approx(10 / 12) and point.round == 2 and point.epoch == pytest.approx(4 / 6)
    assert "instead of 2" in point.note and "trained twice" in point.note
    same = resume_point_in(saved, cfg2, Schedule.of(cfg2, len(DATA.train.y)), len(DATA.train.y))
    assert same.round == 5 and same.note is None


def test_progress_bar_total_is_never_negative(tmp_path, monkeypatch):
    from resist.train import metrics

    totals = []
    real = metrics.MetricsWriter.__init__
    monkeypatch.setattr(metrics.MetricsWriter, "__init__",
                        lambda self, path, progress_total=None, **kw: totals.append(progress_total) or real(self, path, **kw))
    train(cfg_for(tmp_path, **{"run.max_rounds": 4}), DATA)
    train(cfg_for(tmp_path, **{"run.max_rounds": 4}), DATA, resume=True)  # nothing left: a finished run stays
    with pytest.raises(ValueError, match="past the end of this run"):  # already past the end
        train(cfg_for(tmp_path, **{"run.max_rounds": 2}), DATA, resume=True)
    (tmp_path / "summary.json").unlink()  # finished, but cut off before its summary: resuming completes it
    train(cfg_for(tmp_path, **{"run.max_rounds": 4}), DATA, resume=True)
    assert totals == [4, 0]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, faults):
    faults("nan:rank=1:round=4")
    with pytest.raises(TrainingError, match="loss became nan on rank 1 in round 4"):
        train(cfg_for(tmp_path), DATA)
    last = checkpoint.latest(tmp_path)
    assert last.name == "round_000004.pt"
    assert torch.isfinite(torch.stack([v.double().sum() for v in checkpoint.load(last)["model"].values()])).all()


@pytest.mark.timeout(240)
def test_killed_worker_ends_job_then_resume_equals_uninterrupted(tmp_path, faults):
    over = {"run.runtime": "dist", "run.timeout": 20}
    train(cfg_for(tmp_path / "whole", **over), DATA)
    faults("kill:rank=1:round=3:step=7")
    with pytest.raises(CommError, match=r"rank 1 died .*resume with: resist train --resume .*round_000003"):
        train(cfg_for(tmp_path / "cut", **over), DATA)
    faults("")
    train(cfg_for(tmp_path / "cut", **over), DATA, resume=True)
    assert_same(final(tmp_path / "whole"), final(tmp_path / "cut"), tol=1e-6)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.environ.get("RESIST_TORCHRUN_TESTS"), reason=(
    "gloo's re-rendezvous after torchrun restarts a killed worker often fails to connect on this torch "
    "(cf. pytorch/pytorch#167288); set RESIST_TORCHRUN_TESTS=1 to run it"))
def test_torchrun_max_restarts_resumes_by_itself(tmp_path):
    out = tmp_path / "run"
    args = ["train", "smoke", "--runtime", "dist", "--workers", "2", "--max-rounds", "6",
            "--checkpoint-every", "1", "--eval-every", "2", "--timeout", "20", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    env = {**os.environ, "RESIST_FAULTS": f"kill:rank=1:round=3:once={tmp_path / 'fired'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "3", "-m", "resist.cli", *args, str(out), "--auto-resume"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "fired").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_at_round"] == 3
    assert_same(final(tmp_path / "whole"), final(out), tol=1e-6)


def test_fault_spec_parsing():
    f = parse("kill:rank=1:round=2; delay:rank=0:step=5:seconds=0.5")
    assert f[0].kind == "kill" and f[0].rank == 1 and f[0].round == 2 and f[1].seconds == 0.5
    with pytest.raises(ValueError, match="unknown fault"):
        parse("explode:rank=1")
    with pytest.raises(ValueError, match="needs rank"):
        parse("kill:round=1")


# --- bad resumes through the CLI: one line, exit code 2 -------------------------------------------

def _one_line_2(capsys, argv, message):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture
def run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "smoke", "--workers", "2", "--max-rounds", "2", "--checkpoint-every", "1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_resume_damaged_checkpoint(capsys, run_dir):
    last = checkpoint.latest(run_dir)
    last.write_bytes(last.read_bytes()[:1000])
    _one_line_2(capsys, ["train", "--resume", str(run_dir)], "is damaged or not a torch file")


def test_resume_foreign_file(capsys, run_dir):
    torch.save({"hello": torch.zeros(1)}, checkpoint.latest(run_dir))
    _one_line_2(capsys, ["train", "--resume", str(run_dir)], "is not a resist checkpoint")


def test_resume_other_config(capsys, run_dir):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["optim"]["lr"] = 0.5
    (run_dir / "config.json").write_text(json.dumps(cfg))
    _one_line_2(capsys, ["train", "--resume", str(run_dir)], "belongs to another config (optim.lr differ)")


def test_resume_changing_what_it_computes(capsys, run_dir):
    _one_line_2(capsys, ["train", "--resume", str(run_dir), "--lr", "0.3"], "cannot change optim.lr when resuming")


def test_resume_without_checkpoint(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["config", "smoke"]) == 0
    out.mkdir()
    (out / "config.json").write_text(capsys.readouterr().out)
    _one_line_2(capsys, ["train", "--resume", str(out)], "nothing to resume")


def test_resume_not_a_run_folder(capsys, tmp_path):
    _one_line_2(capsys, ["train", "--resume", str(tmp_path / "nope")], "does not exist")


def test_resume_with_preset_is_refused(capsys, run_dir):
    _one_line_2(capsys, ["train", "smoke", "--resume", str(run_dir)], "--resume takes the run folder's own config")


def test_resume_ensemble_refused(capsys, tmp_path):
    out = tmp_path / "e"
    assert main(["train", "smoke", "--algo", "ensemble", "--max-rounds", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    _one_line_2(capsys, ["train", "--resume", str(out)], "cannot be resumed")


def test_rank0_decides_where_every_rank_resumes(tmp_path):
    """Multi-node auto-resume: ranks that see no checkpoint themselves follow rank 0's round, and a rank
    that cannot read rank 0's run folder fails saying so, rather than starting afresh."""
    from resist.comm import run_in_process
    from resist.train.trainer import agree_on_resume

    train(cfg_for(tmp_path / "run", **{"run.max_rounds": 4}), DATA)
    latest = checkpoint.latest(tmp_path / "run")
    paths = run_in_process(3, lambda comm: agree_on_resume(comm, tmp_path / "run", str(latest) if comm.rank == 0 else None))
    assert paths == [str(latest)] * 3
    assert run_in_process(2, lambda comm: agree_on_resume(comm, tmp_path / "run", None)) == [None, None]
    elsewhere = tmp_path / "node2"  # another node's view of the run folder: empty
    with pytest.raises(ValueError, match="rank 1 cannot read .*storage that every node reads"):
        run_in_process(2, lambda comm: agree_on_resume(
            comm, tmp_path / "run" if comm.rank == 0 else elsewhere, str(latest) if comm.rank == 0 else None))
