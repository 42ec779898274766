"""Failures that must end a run in one line, on time, without writing what they would spoil: a hung
worker, a full disk, a model that became non-finite, a killed launcher, damaged input."""

from __future__ import annotations

import time

import pytest

from resist.cli import main

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
