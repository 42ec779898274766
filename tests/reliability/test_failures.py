"""Failures that must end a run in one line, on time, without writing what they would spoil: a hung
worker, a full disk, a model that became non-finite, a killed launcher, damaged input."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resist.cli import main
from resist.train import checkpoint

SMOKE = ["train", "smoke", "--workers", "2", "--max-rounds", "3", "--checkpoint-every", "1"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err):
    """One error line (progress lines before it aside), no traceback."""
    return len([line for line in err.splitlines() if line.startswith("resist: error")]) == 1 and \
        "Traceback" not in err and err.strip().splitlines()[-1].startswith("resist: error")


@pytest.fixture
def faults(monkeypatch):
    return lambda text: monkeypatch.setenv("RESIST_FAULTS", text)


@pytest.mark.timeout(120)
def test_inprocess_hang_fails_within_the_timeout(capsys, tmp_path, faults):
    faults("hang:rank=1:round=2")
    t0 = time.monotonic()
    rc, _, err = run(capsys, *SMOKE, "--timeout", "5", "--out", tmp_path / "r")
    assert rc == 1 and one_line(err), err
    assert time.monotonic() - t0 < 60
    assert "rank 1 did not finish or fail (stuck?)" in err and "timed out" in err
    assert f"resume with: resist train --resume {tmp_path / 'r'} (latest checkpoint round_00000" in err


# --- a dist job ends with its launcher ------------------------------------------------------------

def _children(pid):
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_killing_the_dist_launcher_stops_its_ranks(capsys, tmp_path, sig):
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "RESIST_FAULTS": "delay:rank=0:seconds=0.2"}  # slow enough to be caught mid-run
    launcher = subprocess.Popen([sys.executable, "-m", "resist.cli", "train", "smoke", "--runtime", "dist",
                                 "--workers", "2", "--max-rounds", "200", "--checkpoint-every", "1", "--timeout", "30",
                                 "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 150
        while not list((out / "checkpoints").glob("round_*.pt")):
            assert launcher.poll() is None, launcher.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint yet"
            time.sleep(0.2)
        ranks = _children(launcher.pid)
        assert len(ranks) >= 2
        # while it runs, the folder is its own
        rc, _, err = run(capsys, "train", "--resume", out, "--max-rounds", "300")
        assert rc == 2 and f"in use by another resist run (pid {launcher.pid} on" in err, err
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        t0 = time.monotonic()
        while any(_alive(p) for p in ranks):
            assert time.monotonic() - t0 < 10, f"ranks still running {time.monotonic() - t0:.0f} s after the launcher"
            time.sleep(0.1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for p in _children(launcher.pid):
            os.kill(p, signal.SIGKILL)
    if sig != signal.SIGKILL:  # a stop it could see: one line saying so, with where to resume
        err = launcher.stderr.read()
        assert launcher.returncode == 1 and one_line(err), err
        assert f"stopped by {sig.name}" in err and f"resume with: resist train --resume {out}" in err
    before = _snapshot(out)
    time.sleep(3)
    assert _snapshot(out) == before  # nobody writes after the launcher
    if sig != signal.SIGKILL:  # the launcher's own cleanup; after SIGKILL the next start's
        assert not list((out / "checkpoints").glob(".*.tmp"))


# --- a full disk ----------------------------------------------------------------------------------

def _check_full_disk_outcome(capsys, rc, err, out):
    assert rc == 2 and one_line(err), err
    assert f"no space left on the device at {out / 'checkpoints'} (writing round_000002.pt" in err
    assert "free space there, or copy" in err and "from round_000001.pt" in err
    assert "unexpected pos" not in err and "Errno" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["round_000001.pt"]  # no partial file beside it
    assert checkpoint.load(out / "checkpoints" / "round_000001.pt")["round"] == 1
    assert not (out / "model.pt").exists()


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier_one(capsys, tmp_path, monkeypatch):
    """The writer fails as a full disk makes it fail: part of the file written, then ENOSPC, which
    torch.save turns into its own RuntimeError ("unexpected pos")."""
    real = torch.save

    class FullAfter:
        def __init__(self, f, room):
            self.f, self.room = f, room

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.f.write(data)

    def save(obj, f, *args, **kw):
        if isinstance(obj, dict) and obj.get("format") == "resist-checkpoint" and obj["round"] >= 2:
            f = FullAfter(f, 4096)
        return real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "r"
    rc, _, err = run(capsys, *SMOKE, "--out", out)
    _check_full_disk_outcome(capsys, rc, err, out)


@pytest.fixture
def small_disk(tmp_path):
    """A 280 kB file system: room for the run's first checkpoint, not for its second."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=280k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs to mount a small tmpfs (root on Linux)")
    try:
        yield disk
    finally:
        # Lazily: a failed run's frames may still hold its metrics file open (freed with them later).
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("runtime", ["inprocess", "dist"])
def test_a_really_full_disk(capsys, small_disk, runtime):
    out = small_disk / "r"
    rc, _, err = run(capsys, *SMOKE, "--runtime", runtime, "--timeout", "60", "--out", out)
    _check_full_disk_outcome(capsys, rc, err, out)


# --- a model that became non-finite ---------------------------------------------------------------

@pytest.fixture
def overflow_at(monkeypatch):
    """At each rank's given training step (counted from 1), the update overflows: a weight becomes inf
    after the step, whose loss (computed before the update) is still finite, as ``--lr 3e38`` does on
    some models."""
    from resist.train import trainer

    real, steps, at = trainer.train_step, {}, []

    def step(model, *args, **kw):
        loss = real(model, *args, **kw)
        steps[id(model)] = steps.get(id(model), 0) + 1
        if steps[id(model)] == at[0]:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return loss

    monkeypatch.setattr(trainer, "train_step", step)
    return at.append


def test_a_model_that_became_non_finite_on_the_last_step_is_not_written(capsys, tmp_path, overflow_at):
    overflow_at(1)
    out = tmp_path / "r"
    rc, _, err = run(capsys, "train", "smoke", "--workers", "2", "--max-rounds", "1", "--local-iters", "1", "--out", out)
    assert rc == 1 and one_line(err), err
    assert "the model became non-finite in round 0 on rank 0, so nothing of that round was written" in err
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    assert not (out / "checkpoints").exists()


def test_non_finite_model_keeps_the_last_good_checkpoint(capsys, tmp_path, overflow_at):
    overflow_at(12)  # the last of 3 rounds of 4 steps
    out = tmp_path / "r"
    rc, _, err = run(capsys, *SMOKE, "--out", out)
    assert rc == 1 and one_line(err), err
    assert "non-finite in round 2" in err and f"last good checkpoint: {out / 'checkpoints' / 'round_000002.pt'}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_000001.pt", "round_000002.pt"]
    state = checkpoint.load(out / "checkpoints" / "round_000002.pt")["model"]
    assert all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())
    assert not (out / "model.pt").exists()


@pytest.mark.parametrize("lr", ["inf", "1e39"])
def test_lr_beyond_float32_is_one_line(capsys, tmp_path, lr):
    rc, _, err = run(capsys, *SMOKE, "--lr", lr, "--out", tmp_path / "r")
    assert rc == 2 and one_line(err) and "lr must be > 0 and at most 3.403e+38" in err, err


# --- damaged input: one line each -----------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e12"])
def test_timeout_must_be_finite_seconds(capsys, tmp_path, value):
    rc, _, err = run(capsys, *SMOKE, "--timeout", value, "--out", tmp_path / "r")
    assert rc == 2 and one_line(err) and "timeout must be > 0 and at most 2592000 seconds" in err, err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def resumable(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *SMOKE, "--max-rounds", "2", "--out", out)[0] == 0
    (out / "summary.json").unlink()  # not finished: a resume reads the checkpoint through
    return out


@pytest.mark.parametrize("damage", ["round", "config", "model", "progress", "metrics", "bytes", "progress.elapsed_s",
                                    "model=list", "config=junk", "bytes=ints"])
def test_checkpoint_with_the_marker_but_not_whole(capsys, resumable, damage):
    path = checkpoint.latest(resumable)
    payload = torch.load(path, weights_only=True)
    if damage == "progress.elapsed_s":
        del payload["progress"]["elapsed_s"]
    elif damage == "model=list":
        payload["model"] = list(payload["model"].values())
    elif damage == "config=junk":
        payload["config"]["run"] = "junk"
    elif damage == "bytes=ints":
        payload["bytes"] = [1, 2]
    else:
        del payload[damage]
    torch.save(payload, path)
    rc, _, err = run(capsys, "train", "--resume", resumable)
    assert rc == 2 and one_line(err), err
    assert f"checkpoint {path}" in err and "it is not whole: resume from an earlier checkpoint" in err


class NotAllowed:
    """A class the weights-only loader refuses to rebuild."""


def test_pickled_checkpoint_is_refused_in_a_whole_sentence(capsys, resumable):
    path = checkpoint.latest(resumable)
    torch.save({"format": "resist-checkpoint", "payload": NotAllowed()}, path)
    rc, _, err = run(capsys, "train", "--resume", resumable)
    assert rc == 2 and one_line(err), err
    line = err.strip().splitlines()[-1]
    assert line.endswith(f"{path} is not a resist checkpoint: it holds a pickled {__name__}.NotAllowed, which "
                         f"resist does not load, since unpickling can run any code"), line
