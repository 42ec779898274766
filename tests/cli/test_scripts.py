"""scripts/setup.sh and scripts/demo.sh as a new user runs them, with python, pip and resist replaced
by stubs that record how they were called."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _stubs(tmp_path, torch_installed):
    calls = tmp_path / "calls.txt"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python").write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exit {0 if torch_installed else 1}; fi
echo "python $*" >> {calls}
""")
    (bin_ / "resist").write_text(f'#!/usr/bin/env bash\necho "resist $*" >> {calls}\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bin_ / "python")}
    return calls, env


def test_setup_says_what_each_install_step_does(tmp_path):
    calls, env = _stubs(tmp_path, torch_installed=False)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "test"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    steps = proc.stderr.splitlines()
    assert steps[0].startswith("setup: installing torch 2.13.0") and "resist with its [test] extras" in steps[1]
    assert steps[-1] == "setup: done"
    assert calls.read_text().splitlines() == ["python -m pip install -q torch==2.13.0",
                                              "python -m pip install -q -e .[test]"]


def test_demo_installs_the_plot_extra_then_runs_the_demo(tmp_path):
    calls, env = _stubs(tmp_path, torch_installed=True)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--max-rounds", "2"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == ["python -m pip install -q -e .[demo,plot]", "resist demo --max-rounds 2"]
    assert "setup: installing resist with its [demo,plot] extras" in proc.stderr and "demo: training" in proc.stderr
