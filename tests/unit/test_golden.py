"""Golden tests: today's behaviour of every algorithm, pinned bit for bit (torchtitan's golden loss
files; torchft regenerates its JSON fixtures with an environment flag). Each case trains a fixed tiny
config and compares a digest of the final weights and buffers and the exact byte counters with
tests/golden/algorithms.json. A change that alters them on purpose regenerates the file with
``RESIST_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_golden.py`` and says why in its commit.

The same code computes other last bits on another CPU (oneDNN and BLAS pick their kernels by vendor
and instruction set: the digests recorded on one x86_64 machine did not match on an AMD EPYC with the
same torch), so a digest is pinned per machine kind (``machine_key``). On a kind with no digest
recorded, the final weights must match a fingerprint (per tensor: the sum of absolute values and of
squares) within 1%: last-bit noise amplified over a few rounds stays far below that; a change in what
is trained does not. ``RESIST_UPDATE_GOLDEN=1`` records the fingerprint and this machine's digest only (a
deliberate change invalidates the digests of every other machine)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import pytest
import torch

from resist.presets import preset
from resist.data import load_dataset
from resist.train import train

DATA = load_dataset("synthetic", n_train=256, n_test=64, num_classes=4, size=12)
FILE = Path(__file__).parent.parent / "golden" / "algorithms.json"
UPDATE = os.environ.get("RESIST_UPDATE_GOLDEN") == "1"

CASES = {
    "resist": {},
    "resist_min_depth": {"algo.min_depth": 2},
    "resist_carry_momentum": {"algo.carry_momentum": True},
    "resist_warmup": {"algo.warmup_epochs": 0.5},
    "local_sgd": {"algo.name": "local_sgd"},
    "data_parallel": {"algo.name": "data_parallel"},
    "ensemble": {"algo.name": "ensemble"},
    "streaming_diloco": {"algo.name": "streaming_diloco", "algo.local_iters": 4, "algo.fragments": 2,
                         "algo.sync_delay": 1, "algo.mix_alpha": 0.5, "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},
}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def machine_key() -> str:
    """The machine kind whose last bits a digest pins: architecture, CPU vendor, the instruction set
    torch dispatches to, and torch's version."""
    vendor = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {vendor} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"


def fingerprint(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: [v.double().abs().sum().item(), v.double().pow(2).sum().item()]
            for k, v in sorted(state.items()) if v.is_floating_point()}


def run_case(name: str, out: Path) -> dict:
    cfg = preset("smoke").replace(**{
        "model.layers": (1, 1, 5, 1), "data.batch_size": 16, "optim.epochs": 2, "algo.local_iters": 3,
        "algo.workers": 3, "run.eval_every": 3, "run.out": str(out), **CASES[name]})
    summary = train(cfg, DATA)
    if name == "ensemble":
        state = {f"member{r}/{k}": v for r in range(3)
                 for k, v in torch.load(out / f"member{r}.pt", weights_only=True)["state_dict"].items()}
    else:
        state = torch.load(out / "model.pt", weights_only=True)
    keys = ["sent_bytes_per_worker", "recv_bytes_per_worker", "eval_bytes_sent_per_worker",
            "eval_bytes_recv_per_worker", "checkpoint_bytes_sent_per_worker", "checkpoint_bytes_recv_per_worker",
            "best_acc"]
    return {"digest": digest(state), "fingerprint": fingerprint(state), **{k: summary[k] for k in keys}}


# Intra-op parallelism splits reductions by the thread count, which changes the last bits: one thread
# (tests/conftest.py), so that the digests do not depend on the machine's cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden():
    saved = json.loads(FILE.read_text()) if FILE.is_file() else {}
    yield saved
    if UPDATE:
        FILE.parent.mkdir(parents=True, exist_ok=True)
        FILE.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", list(CASES))
def test_behaviour_is_pinned(name, golden, tmp_path):
    got = run_case(name, tmp_path)
    here = machine_key()
    if UPDATE:
        # A deliberate change invalidates every machine's digest: only this machine's is kept.
        golden[name] = {**got, "digests": {here: got.pop("digest")}}
        golden[name].pop("digest", None)
        return
    assert name in golden, f"no golden entry for {name}; regenerate with RESIST_UPDATE_GOLDEN=1"
    want = golden[name]
    assert {k: v for k, v in got.items() if k not in ("digest", "fingerprint")} == \
        {k: v for k, v in want.items() if k not in ("digests", "fingerprint")}
    if here in want["digests"]:
        assert got["digest"] == want["digests"][here], f"the weights differ from those pinned on {here}"
        return
    assert got["fingerprint"].keys() == want["fingerprint"].keys()
    for k, pair in want["fingerprint"].items():
        for a, b in zip(got["fingerprint"][k], pair):
            assert abs(a - b) <= 0.01 * abs(b) + 1e-6, f"{k}: {got['fingerprint'][k]} vs {pair} (no digest for {here})"
