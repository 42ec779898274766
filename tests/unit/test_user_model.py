"""User models (resist.models.residual_stack): the guide's example (docs/models.md), examples/user_resnet.py, a ResNet
written without this package, implements the protocol, computes what the user's model computes, and
trains with ResIST named as ``module:function`` on both runtimes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from resist.presets import preset
from resist.data import load_dataset
from resist.models import ScaledResidual, check_model, create_model, residual_stack

ROOT = Path(__file__).parents[2]
DATA = load_dataset("synthetic", n_train=96, n_test=32, num_classes=4, size=12)


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # spawned workers inherit sys.path
    return importlib.import_module("user_resnet")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one compute thread


def test_the_example_implements_the_protocol(example):
    check_model(lambda: example.resist_resnet34(num_classes=4, width=1 / 16), torch.randn(2, 3, 12, 12))
    with torch.device("meta"):
        m = example.resist_resnet34()
    assert m.partitionable == tuple(range(8, 13)) and len(m.blocks) == 16
    assert m.skippable == (0, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 14, 15)


def test_wrapped_model_computes_what_the_users_model_computes(example):
    torch.manual_seed(0)
    net = example.ResNet((1, 2, 3, 1), num_classes=5, base=8).eval()
    model = example.as_resist(net).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))  # same modules, scale 1: bit for bit
        block = model.blocks[4]
        model.set_residual_scale([4], 0.5)
        h = model.stem(x)
        for b in model.blocks[:4]:
            h = b(h)
        branch = block.bn2.forward(block.conv2(torch.relu(block.bn1(block.conv1(h)))))  # forward(): no hook
        expected = torch.relu(0.5 * branch + h)
        assert torch.allclose(block(h), expected, atol=1e-6)


def test_the_models_own_initialization_is_used(example):
    """torchvision's He-normal (fan out) convolutions, not PyTorch's default uniform ones."""
    from resist.algorithms.parts import init_part

    with torch.device("meta"):
        m = example.resist_resnet34(width=0.5)
    init_part(m, 9, seed=0)
    w = m.blocks[9].conv1.weight  # 128 -> 128 channels, 3x3: fan out 1152
    assert abs(w.std().item() - (2 / 1152) ** 0.5) < 0.002
    assert abs(w.std().item() - (1 / (3 * 1152)) ** 0.5) > 0.01


@pytest.mark.timeout(240)
def test_the_example_trains_with_resist_in_process_and_on_gloo_alike(example, tmp_path):
    over = {"model.name": "user_resnet:resist_resnet34", "model.layers": None, "algo.workers": 2,
            "data.batch_size": 8, "algo.local_iters": 2, "run.max_rounds": 2, "run.eval_every": 100, "run.timeout": 60}
    from resist.train import train

    got = {}
    for runtime in ("inprocess", "dist"):
        cfg = preset("smoke").replace(**{**over, "run.runtime": runtime, "run.out": str(tmp_path / runtime)})
        got[runtime] = (train(cfg, DATA), torch.load(tmp_path / runtime / "model.pt", weights_only=True))
    (s_local, local), (s_dist, dist) = got["inprocess"], got["dist"]
    assert local.keys() == dist.keys() and all(torch.equal(local[k], dist[k]) for k in local)
    assert s_local["sent_bytes_per_worker"] == s_dist["sent_bytes_per_worker"]
    assert 0 < s_local["sent_bytes_per_worker"][0]
    # ResIST dealt the blocks out: each worker sent less than the whole model.
    whole = sum(v.numel() * v.element_size() for v in local.values())
    assert s_local["sent_bytes_per_worker"][0] < 2 * whole


def test_readme_example_is_the_tested_file():
    """Every line of the user-model guide's example appears in examples/user_resnet.py."""
    readme = (ROOT / "docs" / "models.md").read_text()
    section = readme[readme.index("## User models"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    source = (ROOT / "examples" / "user_resnet.py").read_text()
    lines = [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("...")]
    missing = [line for line in lines if line not in source]
    assert len(lines) > 10 and not missing, missing


def _mlp_block(dim):
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


@pytest.mark.parametrize("style", ["scaled_residual", "callable"])
def test_other_ways_to_scale_a_branch_implement_the_protocol(style):
    class Added(nn.Module):  # x + c f(x) with c kept where the user chose
        def __init__(self, dim):
            super().__init__()
            self.f, self.c = _mlp_block(dim), 1.0

        def forward(self, x):
            return x + self.c * self.f(x)

    def build():
        blocks = ([ScaledResidual(_mlp_block(8)) for _ in range(4)] if style == "scaled_residual"
                  else [Added(8) for _ in range(4)])
        scale = None if style == "scaled_residual" else (lambda block, c: setattr(block, "c", c))
        return residual_stack(nn.Linear(6, 8), blocks, nn.Linear(8, 3), partitionable=[1, 2],
                              skippable=range(4), scale=scale)

    check_model(build, torch.randn(5, 6))


def test_residual_stack_refuses_what_it_cannot_scale_or_skip():
    blocks = [nn.Linear(4, 4), nn.Linear(4, 4)]
    with pytest.raises(ValueError, match="no residual_scale attribute"):
        residual_stack(nn.Identity(), blocks, nn.Identity(), partitionable=[1])
    with pytest.raises(ValueError, match="no submodule 'bn2'"):
        residual_stack(nn.Identity(), blocks, nn.Identity(), partitionable=[1], scale="bn2")
    with pytest.raises(ValueError, match="must be skippable"):
        residual_stack(nn.Identity(), blocks, nn.Identity(), partitionable=[1], skippable=[0], scale=lambda b, c: None)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        residual_stack(nn.Identity(), blocks, nn.Identity(), partitionable=[2], scale=lambda b, c: None)


def test_create_model_by_import_path_reaches_the_example(example):
    m = create_model("user_resnet:resist_resnet34", num_classes=3, width=1 / 16)
    assert m.head[-1].out_features == 3
