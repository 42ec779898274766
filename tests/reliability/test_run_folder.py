"""A run folder belongs to one run: a fresh run never overwrites another run or a user's files, the
default folder is new every time, two runs never share a folder, and a finished run stays finished."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from resist import rundir
from resist.cli import main

SMOKE = ["train", "smoke", "--workers", "2", "--max-rounds", "2", "--checkpoint-every", "1"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err):
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def contents(folder):
    """Every file under ``folder`` with a digest of its bytes; the marker aside, which names the last
    process that held the folder (the lock's, not the run's, state)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != rundir.MARKER}


@pytest.fixture
def finished(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *SMOKE, "--out", out)[0] == 0
    return out


def test_fresh_run_refuses_a_folder_holding_a_run(capsys, finished):
    before = contents(finished)
    rc, _, err = run(capsys, *SMOKE, "--seed", "1", "--out", finished)
    assert rc == 2 and one_line(err), err
    assert "already holds a finished run" in err and f"--resume {finished}" in err and "--force" in err
    assert contents(finished) == before


def test_force_replaces_only_the_runs_own_files(capsys, finished):
    (finished / "notes.txt").write_text("mine")
    (finished / "checkpoints" / "README").write_text("also mine")
    old_summary = (finished / "summary.json").read_text()
    rc, _, err = run(capsys, *SMOKE, "--max-rounds", "1", "--seed", "1", "--out", finished, "--force")
    assert rc == 0, err
    assert (finished / "notes.txt").read_text() == "mine" and (finished / "checkpoints" / "README").exists()
    assert [p.name for p in (finished / "checkpoints").glob("round_*.pt")] == ["round_000001.pt"]
    assert (finished / "summary.json").read_text() != old_summary
    assert json.loads((finished / "config.json").read_text())["run"]["seed"] == 1
    assert len((finished / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("force", [False, True])
def test_a_users_folder_is_refused_even_with_force(capsys, tmp_path, force):
    """A config.json and model.pt that no run wrote there: even a resist config is the user's own."""
    folder = tmp_path / "mine"
    folder.mkdir()
    assert main(["config", "smoke"]) == 0
    (folder / "config.json").write_text(capsys.readouterr().out)
    (folder / "model.pt").write_bytes(b"my weights")
    (folder / "notes.txt").write_text("notes")
    before = contents(folder)
    rc, _, err = run(capsys, *SMOKE, "--out", folder, *(["--force"] if force else []))
    assert rc == 2 and one_line(err), err
    assert "config.json, model.pt, which no resist run wrote" in err
    assert contents(folder) == before and not (folder / rundir.MARKER).exists()


def test_a_folder_with_other_files_only_is_used_and_they_stay(capsys, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "command.pending").write_text("a script's note")
    rc, _, err = run(capsys, *SMOKE, "--out", folder)
    assert rc == 0, err
    assert (folder / "command.pending").read_text() == "a script's note" and (folder / "summary.json").exists()


@pytest.mark.parametrize("what", ["empty", "file"])
def test_out_must_name_a_folder(capsys, tmp_path, monkeypatch, what):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    out = "" if what == "empty" else "a_file"
    rc, _, err = run(capsys, *SMOKE, "--out", out)
    assert rc == 2 and one_line(err), err
    assert ("--out) is empty" if what == "empty" else "--out a_file is a file") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_runs_without_out_get_a_new_folder_each(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, _ = run(capsys, *SMOKE, "--dataset", "cifar10", "--data-dir", tmp_path / "nowhere")
    assert rc == 2 and not (tmp_path / "runs").exists()  # a failed first run leaves nothing behind
    rc, out1, _ = run(capsys, *SMOKE)
    assert rc == 0
    first = sorted((tmp_path / "runs").glob("smoke-*"))
    assert len(first) == 1
    before = contents(first[0])
    rc, out2, _ = run(capsys, *SMOKE, "--seed", "1")
    assert rc == 0
    both = sorted((tmp_path / "runs").glob("smoke-*"))
    assert len(both) == 2 and contents(first[0]) == before
    assert (tmp_path / "runs" / "latest").resolve() == both[1].resolve() and str(both[1].name) in out2
    # the default that fails before writing anything leaves no folder, and the link where it was
    rc, _, _ = run(capsys, *SMOKE, "--dataset", "cifar10", "--data-dir", tmp_path / "nowhere")
    assert rc == 2
    assert sorted((tmp_path / "runs").glob("smoke-*")) == both
    assert (tmp_path / "runs" / "latest").resolve() == both[1].resolve()


def test_demo_refuses_its_previous_demo(capsys, tmp_path, monkeypatch):
    from resist.data import load_dataset
    import resist.demo as demo

    monkeypatch.setattr(demo, "pick_dataset", lambda data_dir: load_dataset("digits"))
    args = ["demo", "--workers", "2", "--max-rounds", "1", "--out", tmp_path / "demo"]
    assert run(capsys, *args)[0] == 0
    before = contents(tmp_path / "demo")
    rc, _, err = run(capsys, *args)
    assert rc == 2 and one_line(err) and "--force" in err and "--resume" not in err, err
    assert contents(tmp_path / "demo") == before
    assert run(capsys, *args, "--force")[0] == 0


# --- one run per folder ---------------------------------------------------------------------------

HOLD = """
import sys, time
from resist.rundir import lock
held = lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_folder_in_use_is_refused_naming_the_process_and_freed_when_it_dies(capsys, finished):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(finished)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = contents(finished)
        for argv in ([*SMOKE, "--out", finished, "--force"], ["train", "--resume", finished, "--max-rounds", "3"]):
            rc, _, err = run(capsys, *argv)
            assert rc == 2 and one_line(err), err
            assert f"is in use by another resist run (pid {holder.pid} on" in err
            assert contents(finished) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock with the process
        holder.wait()
    rc, _, err = run(capsys, "train", "--resume", finished, "--max-rounds", "3")
    assert rc == 0, err


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    with rundir.lock(tmp_path / "r"):
        with pytest.raises(rundir.RunDirError, match=f"pid {os.getpid()} on"):
            rundir.lock(tmp_path / "r")
    rundir.lock(tmp_path / "r").release()


def test_interrupted_writes_are_removed_at_the_next_start(capsys, finished):
    """What a killed writer leaves (``.NAME.random.tmp``) goes; a user's look-alike stays."""
    leftovers = [finished / "checkpoints" / ".round_000003.pt.ab12cd34.tmp", finished / ".summary.json.x9y8z7.tmp"]
    for p in leftovers:
        p.write_bytes(b"partial")
    (finished / ".mine.tmp").write_text("keep")
    assert run(capsys, "train", "--resume", finished, "--max-rounds", "3")[0] == 0
    assert not any(p.exists() for p in leftovers) and (finished / ".mine.tmp").exists()


# --- a finished run stays finished ----------------------------------------------------------------

def test_resume_of_a_finished_run_with_other_workers_leaves_it_untouched(capsys, finished):
    before = contents(finished)
    rc, out, err = run(capsys, "train", "--resume", finished, "--workers", "3")
    assert rc == 0, err
    assert "is finished" in err and "--max-rounds above 2" in err
    assert contents(finished) == before
    assert "run folder" in out


def test_resume_that_trained_all_epochs_says_more_epochs_are_a_new_run(capsys, tmp_path):
    out = tmp_path / "r"
    assert run(capsys, "train", "smoke", "--workers", "2", "--epochs", "0.5", "--out", out)[0] == 0
    before = contents(out)
    rc, _, err = run(capsys, "train", "--resume", out)
    assert rc == 0 and "is finished" in err and "--epochs" in err and "new run" in err, err
    assert contents(out) == before


def test_resume_with_max_rounds_below_the_checkpoint_is_refused(capsys, finished):
    before = contents(finished)
    rc, _, err = run(capsys, "train", "--resume", finished, "--max-rounds", "1")
    assert rc == 2 and one_line(err), err
    assert "round_000002.pt continues at round 2, past the end of this run at round 1" in err
    assert contents(finished) == before


def test_resume_extends_a_run_cut_by_max_rounds(capsys, finished):
    rc, _, err = run(capsys, "train", "--resume", finished, "--max-rounds", "3")
    assert rc == 0, err
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["resumed_at_round"] == 2
