"""Tests for resist.models: registry, exact paper parameter counts, skipping and residual scaling."""

import pytest
import torch

from resist.models import create_model, list_models

GENERIC = {"paper_resnet", "preact_resnet", "resnet"}
TINY = dict(width=1 / 16)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def tiny(name, **kwargs):
    if name in GENERIC:
        kwargs.setdefault("layers", (1, 2, 3, 1))
    return create_model(name, **{**TINY, **kwargs})


def test_paper_resnet101_exact_parameter_counts():
    with torch.device("meta"):
        m = create_model("paper_resnet101", num_classes=100)
    total = n_params(m)
    part = [n_params(m.blocks[i]) for i in m.partitionable]
    assert total == 41_396_900
    assert len(part) == 22 and set(part) == {1_180_672}
    assert total - sum(part) == 15_422_116


@pytest.mark.parametrize(
    "name,expected",
    [("paper_resnet101", 22), ("paper_resnet152", 35), ("paper_resnet200", 49), ("preact_resnet50", 5)],
)
def test_partitionable_counts(name, expected):
    with torch.device("meta"):
        m = create_model(name)
    assert len(m.partitionable) == expected
    assert m.partitionable == m.sections[2][1:]


def test_parameters_live_only_in_stem_blocks_head():
    m = tiny("preact_resnet", stem="imagenet")
    names = [n for n, _ in m.named_parameters()] + [n for n, _ in m.named_buffers()]
    assert all(n.split(".")[0] in ("stem", "blocks", "head") for n in names)
    assert [i for s in m.sections for i in s] == list(range(len(m.blocks)))


# Image classifiers (the detectors' (B, A, H, W, 5 + C) outputs are tested in tests/detection/test_model.py).
@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith(("gpt_", "yolo_"))])
def test_every_model_runs_at_tiny_width(name):
    m = tiny(name, num_classes=7).eval()
    with torch.no_grad():
        for size in (32, 8):
            assert m(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["preact_resnet", "resnet"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_imagenet_stem_and_block_choice(name, block):
    m = tiny(name, block=block, stem="imagenet", num_classes=5)
    assert m(torch.randn(2, 3, 24, 24)).shape == (2, 5)


@pytest.mark.parametrize("name", ["paper_resnet", "preact_resnet", "resnet"])
def test_skipping_equals_zero_residual_scale(name):
    torch.manual_seed(0)
    m = tiny(name, layers=(1, 1, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        m.set_residual_scale(m.partitionable, 0.0)
        zeroed = m(x)
        m.set_residual_scale(m.partitionable, 1.0)
        full = m(x)
        m.skip = frozenset(m.partitionable)
        skipped = m(x)
        for i in m.partitionable:
            m.blocks[i].to("meta")
        skipped_meta = m(x)
    assert torch.allclose(skipped, zeroed, atol=1e-6)
    assert torch.equal(skipped, skipped_meta)
    assert not torch.allclose(full, zeroed)


def test_residual_scale_zero_returns_shortcut():
    torch.manual_seed(0)
    m = tiny("preact_resnet", layers=(1, 2, 2, 1)).eval()
    x = torch.randn(2, m.blocks[0].bn1.num_features, 8, 8)
    with torch.no_grad():
        first = m.blocks[0]  # projection shortcut on the activated input
        first.residual_scale = 0.0
        assert torch.equal(first(x), first.shortcut(torch.relu(first.bn1(x))))
        identity = m.blocks[m.sections[1][1]]
        y = torch.randn(2, identity.bn1.num_features, 8, 8)
        identity.residual_scale = 0.0
        assert torch.equal(identity(y), y)
        identity.residual_scale = 0.5
        half = identity(y) - y
        identity.residual_scale = 1.0
        assert torch.allclose(identity(y) - y, 2 * half, atol=1e-6)


def test_post_activation_scale_zero_is_relu_of_shortcut():
    m = tiny("resnet", layers=(1, 2, 1, 1)).eval()
    block = m.blocks[m.sections[1][1]]
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    block.residual_scale = 0.0
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize("name", ["paper_resnet101", "preact_resnet50", "resnet50"])
def test_skippable_is_exactly_identity_shortcut_blocks(name):
    with torch.device("meta"):
        m = create_model(name)
    firsts = {s[0] for s in m.sections}
    identity = {i for i, b in enumerate(m.blocks) if b.shortcut is None}
    assert set(m.skippable) == identity
    assert not {m.sections[k][0] for k in (1, 2, 3)} & identity
    assert set(range(len(m.blocks))) - firsts <= identity
    assert set(m.partitionable) <= identity


def test_paper_first_block_is_identity():
    with torch.device("meta"):
        m = create_model("paper_resnet101")
    assert 0 in m.skippable  # 64 -> 64, stride 1: no projection in the basic-block network


@pytest.mark.parametrize(
    "kwargs",
    [dict(width=0), dict(width=-1.0), dict(num_classes=0), dict(layers=(1, 1, 1)), dict(stem="big")],
)
def test_bad_arguments_raise_value_error(kwargs):
    kwargs = {"layers": (1, 1, 2, 1), **kwargs}
    with pytest.raises(ValueError):
        create_model("preact_resnet", **kwargs)


def test_unknown_model_raises_one_line_value_error():
    with pytest.raises(ValueError, match="unknown model 'x'; choose one of: ") as err:
        create_model("x")
    assert "\n" not in str(err.value)
    assert "paper_resnet101" in str(err.value)


def test_width_rounding():
    m = create_model("paper_resnet", width=0.1, layers=(1, 1, 2, 1))
    assert m.stem[0].out_channels == 6  # round(6.4)
    m = create_model("paper_resnet", width=1e-3, layers=(1, 1, 2, 1))
    assert m.stem[0].out_channels == 1
