"""The partitionable-model protocol (resist.models.protocol) over every registered model; the model's own
initialization surviving per-part seeded initialization; the checker failing on models that break it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from resist.algorithms.parts import init_model, init_part
from resist.models import ProtocolError, ScaledResidual, check_model, create_model, list_models, residual_stack
from resist.models.protocol import can_fold, fold_residual_scale, parameter_counts

GENERIC = {"paper_resnet", "preact_resnet", "resnet", "yolo_resnet"}  # factories that take layers=


def tiny_builder(name, **kwargs):
    kwargs = {"width": 1 / 16, "num_classes": 5, **kwargs}
    if name in GENERIC:
        kwargs.setdefault("layers", (1, 2, 3, 1))
    return lambda: create_model(name, **kwargs)


def example_input(name):
    """A batch the model takes: images, or token ids for the language models."""
    gen = torch.Generator().manual_seed(1)
    if name.startswith("gpt"):
        return torch.randint(0, 5, (2, 16), generator=gen)
    return torch.randn(2, 3, 16, 16, generator=gen)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one compute thread


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_implements_the_protocol(name):
    check_model(tiny_builder(name), example_input(name))


@pytest.mark.parametrize("name", list_models())
def test_folding_the_scale_into_branch_outputs_keeps_the_function(name):
    """ResIST's cool-down folds c into the layers that end each partitioned branch: the whole network
    with branches scaled by c and the folded one at scale 1 compute the same function (every built-in
    model names its branch outputs, so none falls back to training scaled branches)."""
    model = init_model(tiny_builder(name)(), seed=3)
    model.eval()
    blocks = model.partitionable or model.skippable[:1]
    assert can_fold(model, blocks)
    x = example_input(name)
    model.set_residual_scale(blocks, 0.25)
    with torch.no_grad():
        scaled = model(x)
    folded = fold_residual_scale(model, blocks, 0.25)
    assert folded and {b.residual_scale for b in model.blocks} == {1.0}
    with torch.no_grad():
        torch.testing.assert_close(model(x), scaled, rtol=1e-5, atol=1e-5)


# --- vision transformers -------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [("vit_tiny", 5_717_416), ("vit_small", 22_050_664)])
def test_vit_parameter_counts_equal_timms_patch16_224(name, expected):
    """timm's vit_tiny_patch16_224 and vit_small_patch16_224 (1000 classes) have exactly these counts."""
    with torch.device("meta"):
        m = create_model(name, num_classes=1000, stem="imagenet")
    counts = parameter_counts(m)
    assert counts["total"] == expected
    assert len(m.blocks) == 12 and m.partitionable == tuple(range(1, 11)) and m.skippable == tuple(range(12))
    assert counts["shared"] == expected - 10 * counts["block1"]


def test_vit_width_scales_the_embedding_in_whole_heads_and_cifar_stem_uses_4_pixel_patches():
    with torch.device("meta"):
        m = create_model("vit_small", width=0.25)
        assert m.dim == 96 and m.stem.proj.kernel_size == (4, 4) and m.stem.pos_embed.shape == (1, 65, 96)
        assert create_model("vit_tiny", width=1 / 100).dim == 3  # at least one dimension per head
        assert create_model("vit_tiny", pool="mean").stem.pos_embed.shape == (1, 64, 192)
        m = create_model("vit_tiny", shared_first=2, shared_last=3)
        assert m.partitionable == tuple(range(2, 9))


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(num_classes=0), dict(stem="big"), dict(pool="max"),
                                    dict(patch_size=5), dict(shared_first=7, shared_last=6), dict(shared_last=-1),
                                    dict(layers=(1, 1, 4, 1))])
def test_vit_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        create_model("vit_tiny", **kwargs)


def test_vit_residual_scale_multiplies_both_branches():
    torch.manual_seed(0)
    block = create_model("vit_tiny", width=1 / 16).blocks[3].eval()
    x = torch.randn(2, 5, block.norm1.normalized_shape[0])
    with torch.no_grad():
        block.residual_scale = 0.3
        h = x + 0.3 * block.attn(block.norm1(x))
        expected = h + 0.3 * block.mlp(block.norm2(h))
        assert torch.allclose(block(x), expected, atol=1e-6)
        block.residual_scale = 0.0
        assert torch.equal(block(x), x)


def test_vit_runs_on_another_grid_by_resizing_position_embeddings():
    m = create_model("vit_tiny", width=1 / 16, num_classes=3).eval()
    with torch.no_grad():
        for size in (32, 12, 8):
            assert m(torch.randn(2, 3, size, size)).shape == (2, 3)


# --- the model's own initialization survives per-part initialization -----------------------------

def test_vit_initialization_survives_init_part():
    """ViT linears are N(0, 0.02) (timm), not PyTorch's default (std 1/sqrt(3 fan_in) = 0.17 at dim 12)."""
    with torch.device("meta"):
        m = create_model("vit_tiny", width=1 / 16)
    init_part(m, 5, seed=0)
    init_part(m, "stem", seed=0)
    w = torch.cat([m.blocks[5].attn.qkv.weight.flatten(), m.blocks[5].mlp.fc1.weight.flatten(),
                   m.blocks[5].mlp.fc2.weight.flatten()])
    assert abs(w.std().item() - 0.02) < 0.003
    assert not m.blocks[5].mlp.fc1.bias.any()
    assert abs(m.stem.pos_embed.std().item() - 0.02) < 0.004 and m.stem.cls_token.abs().max() < 1e-5


class TinyGPTBlocks(nn.Module):
    """A pre-norm MLP stack with GPT-2's rule (Radford et al. 2019; nanoGPT): residual output
    projections N(0, 0.02 / sqrt(2 depth)), other linears N(0, 0.02)."""

    def __init__(self, depth=8, dim=16, num_classes=10, width=1.0):
        super().__init__()
        self.stem = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                  nn.Linear(4 * dim, dim)) for _ in range(depth))
        for b in self.blocks:
            b[3].is_residual_projection = True
        self.head = nn.Linear(dim, num_classes)
        self.partitionable = self.skippable = tuple(range(depth))
        self.skip, self.scale = frozenset(), [1.0] * depth

    def reset_part(self, module):
        for m in module.modules():
            if isinstance(m, nn.Linear):
                std = 0.02 / math.sqrt(2 * len(self.blocks)) if getattr(m, "is_residual_projection", False) else 0.02
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def set_residual_scale(self, indices, c):
        for i in indices:
            self.scale[i] = float(c)

    def forward(self, x):
        x = self.stem(x)
        for i, b in enumerate(self.blocks):
            if i not in self.skip:
                x = x + self.scale[i] * b(x)
        return self.head(x)


def test_scaled_residual_projection_init_survives_init_part():
    """Per-part seeded initialization calls the model's reset_part: the scaled projections keep their
    std 0.02 / sqrt(16) = 0.005, where ``reset_parameters`` would give 1/sqrt(3 * 64) = 0.072."""
    with torch.device("meta"):
        m = TinyGPTBlocks(depth=8, dim=16)
    init_model(m, seed=3)
    proj = torch.cat([b[3].weight.flatten() for b in m.blocks])
    fc = torch.cat([b[1].weight.flatten() for b in m.blocks])
    assert abs(proj.std().item() - 0.005) < 0.0005
    assert abs(fc.std().item() - 0.02) < 0.002
    check_model(lambda: TinyGPTBlocks(depth=4, dim=8), torch.randn(3, 8))


class RuleBlock(nn.Module):
    """GPT-2's rule written as the block's own ``reset_parameters`` (a module-level rule, no reset_part)."""

    def __init__(self, dim, depth):
        super().__init__()
        self.depth, self.ln, self.fc, self.proj = depth, nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def reset_parameters(self):
        self.ln.reset_parameters()
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02 / math.sqrt(2 * self.depth))
        nn.init.zeros_(self.fc.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        return self.proj(torch.nn.functional.gelu(self.fc(self.ln(x))))


def test_a_modules_own_reset_parameters_initializes_all_it_contains():
    """Without reset_part, a block's reset_parameters is its whole initialization: its linears' defaults
    (std 1/sqrt(3 * 64) = 0.072 for the projection) do not overwrite it afterwards."""
    with torch.device("meta"):
        m = residual_stack(nn.Linear(16, 16), [ScaledResidual(RuleBlock(16, 8)) for _ in range(8)], nn.Linear(16, 3),
                           partitionable=range(8))
    init_model(m, seed=0)
    proj = torch.cat([b.branch.proj.weight.flatten() for b in m.blocks])
    assert abs(proj.std().item() - 0.005) < 0.0005
    assert abs(torch.cat([b.branch.fc.weight.flatten() for b in m.blocks]).std().item() - 0.02) < 0.002


def test_gpt_scaled_residual_projections_survive_init_part():
    """The GPT (models/gpt.py) writes GPT-2's rule as each block's reset_parameters: per-part seeded
    initialization keeps it (before, the linears' defaults overwrote it: std 0.072)."""
    from resist.models.gpt import GPT

    with torch.device("meta"):
        m = GPT(depth=8, dim=64, heads=4)
    init_part(m, 3, seed=0)
    block = m.blocks[3]
    assert abs(block.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(block.out.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert abs(block.qkv.weight.std().item() - 0.02) < 0.002
    check_model(lambda: GPT(depth=4, dim=16, heads=2, context=8, vocab=32), torch.randint(0, 32, (2, 8)))


def test_init_part_is_seeded_per_part():
    with torch.device("meta"):
        a, b = create_model("vit_tiny", width=1 / 16), create_model("vit_tiny", width=1 / 16)
    init_part(a, 4, seed=7)
    init_part(b, 4, seed=7)
    assert torch.equal(a.blocks[4].attn.qkv.weight, b.blocks[4].attn.qkv.weight)
    init_part(b, 4, seed=8)
    assert not torch.equal(a.blocks[4].attn.qkv.weight, b.blocks[4].attn.qkv.weight)


class _Gain(nn.Module):
    """A module with a parameter and no reset_parameters: nothing initializes it by default."""

    def __init__(self, dim):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gain


def test_a_parameter_left_uninitialized_is_an_error_naming_it():
    with torch.device("meta"):
        m = residual_stack(nn.Linear(4, 4), [nn.Sequential(nn.Linear(4, 4), _Gain(4))], nn.Linear(4, 2),
                           partitionable=[], scale=lambda block, c: None)
    with pytest.raises(ValueError, match=r"part 0: 1 tensor\(s\) left uninitialized.*'1.gain'"):
        init_part(m, 0, seed=0)


# --- the checker fails where it should -----------------------------------------------------------

class _Broken(TinyGPTBlocks):
    def __init__(self, flaw, **kw):
        super().__init__(**kw)
        self.flaw = flaw
        if flaw == "outside":
            self.extra = nn.Linear(2, 2)
        if flaw == "unsorted":
            self.partitionable = (2, 1)
        if flaw == "transient":
            self.blocks[0].register_buffer("mask", torch.ones(2), persistent=False)

    def set_residual_scale(self, indices, c):
        if self.flaw != "scale_ignored":
            super().set_residual_scale(indices, c)

    def forward(self, x):
        if self.flaw == "skip_ignored":
            self.skip = frozenset()
        return super().forward(x)


@pytest.mark.parametrize("flaw,message", [
    ("outside", "outside stem, blocks and head"), ("unsorted", "must be sorted"), ("transient", "non-persistent"),
    ("scale_ignored", "differs from scaling|changes nothing"), ("skip_ignored", "must not touch skipped blocks")])
def test_check_model_rejects_a_model_that_breaks_the_protocol(flaw, message):
    with pytest.raises(ProtocolError, match=message):
        check_model(lambda: _Broken(flaw, depth=3, dim=8), torch.randn(3, 8))


# --- models named by import path ------------------------------------------------------------------

def test_create_model_imports_module_colon_function():
    m = create_model("resist.models:vit_tiny", num_classes=3, width=1 / 16)
    assert len(m.blocks) == 12
    with pytest.raises(ValueError, match="cannot import model factory 'no_such_module:f'"):
        create_model("no_such_module:f")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
