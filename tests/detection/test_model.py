"""The detectors keep the model protocol ResIST relies on (stem, blocks, head, partitionable, skip, scale)."""

import pytest
import torch
from torch import nn

from resist.algorithms.parts import init_model
from resist.models import create_model, list_models
from resist.models.resnet import BasicBlock
from resist.models.yolo import (DETECTION_MODELS, VOC_ANCHORS, YOLOHead, create_detection_model,
                                          yolo_resnet, yolo_resnet101)

TINY = dict(width=1 / 16)


def test_paper_detector_is_a_post_activation_basic_resnet101_with_a_detection_conv():
    with torch.device("meta"):
        m = yolo_resnet101()
    assert [len(s) for s in m.sections] == [3, 4, 23, 3]
    assert all(isinstance(b, BasicBlock) for b in m.blocks)  # post-activation basic blocks (paper §5)
    assert m.partitionable == m.sections[2][1:] and len(m.partitionable) == 22
    assert isinstance(m.head, YOLOHead) and len(m.head.pre) == 0 and len(m.head.hidden) == 0
    assert m.head.pred.out_channels == 5 * 25 and m.head.pred.in_channels == 512
    assert m.anchors == VOC_ANCHORS and m.num_classes == 20
    assert m.anchors[0] == pytest.approx((1.3221 / 13, 1.73145 / 13))


def test_output_grid_is_yolov2s_for_416_pixels():
    m = yolo_resnet101(num_classes=3, **TINY)
    with torch.device("meta"):
        out = yolo_resnet101(num_classes=3)(torch.empty(1, 3, 416, 416))
    assert out.shape == (1, 5, 13, 13, 8)  # stride 32 with the ImageNet stem, as YOLOv2
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 5, 2, 2, 8)
    cifar = yolo_resnet101(num_classes=3, stem="cifar", **TINY)
    assert cifar(torch.randn(2, 3, 64, 64)).shape == (2, 5, 8, 8, 8)  # stride 8


def test_parameter_names_are_stem_blocks_and_head():
    m = yolo_resnet101(num_classes=4, **TINY)
    prefixes = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert prefixes == {"stem", "blocks", "head"}
    assert {n for n, _ in m.head.named_parameters()} == {"pred.weight", "pred.bias"}
    assert {n.split(".")[0] for n, _ in m.named_buffers()} <= {"stem", "blocks", "head"}
    two = yolo_resnet101(num_classes=4, head_convs=2, **TINY)
    assert {n.split(".")[0] for n, _ in two.head.named_parameters()} == {"hidden", "pred"}


def test_meta_built_model_initializes_part_by_part_and_skips_blocks():
    with torch.device("meta"):
        m = yolo_resnet101(num_classes=4, **TINY)
    init_model(m, seed=0)  # what every worker does with the parts it holds
    assert not any(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    assert torch.isfinite(m.head.pred.weight).all()
    x = torch.randn(2, 3, 64, 64)
    full = m(x)
    m.skip = frozenset(m.partitionable[::2])  # a sub-ResNet: half of section 3 left out
    sub = m(x)
    assert sub.shape == full.shape and not torch.allclose(sub, full)
    sub.sum().backward()
    assert all(m.blocks[i].conv1.weight.grad is None for i in m.skip)
    assert all(m.blocks[i].conv1.weight.grad is not None for i in m.partitionable[1::2])
    assert m.head.pred.weight.grad is not None


def test_residual_scale_changes_the_output():
    m = yolo_resnet101(num_classes=4, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    before = m(x)
    m.set_residual_scale(m.partitionable, 0.5)
    assert not torch.allclose(before, m(x))
    m.set_residual_scale(m.partitionable, 1.0)
    assert torch.equal(before, m(x))


@pytest.mark.parametrize("name", sorted(DETECTION_MODELS))
def test_registered_detectors_build(name):
    kw = {"layers": (1, 1, 4, 1)} if name == "yolo_resnet" else {}
    with torch.device("meta"):
        m = create_detection_model(name, num_classes=20, **kw)
    assert len(m.partitionable) == len(m.sections[2]) - 1 and isinstance(m.head, YOLOHead)


# The registry also holds transformers, and the detectors themselves.
RESNETS = [n for n in list_models() if not n.startswith(("vit_", "gpt_", "yolo_"))]


@pytest.mark.parametrize("backbone", RESNETS)
def test_any_registered_resnet_is_a_backbone(backbone):
    kw = {"layers": (1, 1, 3, 1)} if backbone in ("paper_resnet", "preact_resnet", "resnet") else {}
    with torch.device("meta"):  # shapes only: the deep ones are slow to run for real
        m = create_detection_model(f"yolo:{backbone}", num_classes=3, **TINY, **kw)
        assert m(torch.empty(1, 3, 64, 64)).shape == (1, 5, 2, 2, 8)
        backbone_only = create_model(backbone, **TINY, **kw)
    # A pre-activation backbone's final BN-ReLU (its head's, before pooling) is kept before the conv.
    pre_pool = [type(l) for l in backbone_only.head][:-3]
    assert [type(l) for l in m.head.pre] == pre_pool


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown detection model"):
        create_detection_model("yolo_vgg16")
    with pytest.raises(ValueError, match="'vit_tiny' is not a ResNet"):
        create_detection_model("yolo:vit_tiny")
    with pytest.raises(ValueError, match="'yolo_resnet101' is already a detector"):
        create_detection_model("yolo:yolo_resnet101")
    with pytest.raises(ValueError, match="unknown model"):
        create_detection_model("yolo:vgg16", **TINY)
    with pytest.raises(ValueError, match="head_convs"):
        yolo_resnet101(head_convs=3, **TINY)
    with pytest.raises(ValueError, match="anchors"):
        yolo_resnet101(anchors=[(0.1, -1.0)], **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        yolo_resnet101(num_classes=0, **TINY)
    assert isinstance(yolo_resnet101(num_classes=2, **TINY).head.pred, nn.Conv2d)


def test_channels_last_input_gives_the_same_output():
    m = yolo_resnet101(num_classes=4, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = m(x)
    m = m.to(memory_format=torch.channels_last)
    assert torch.allclose(m(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


def test_any_depth_of_the_paper_detector():
    with torch.device("meta"):
        m = yolo_resnet(num_classes=3, layers=(1, 1, 5, 1))
        deep = yolo_resnet101(num_classes=3)
    assert [len(s) for s in m.sections] == [1, 1, 5, 1] and m.partitionable == (3, 4, 5, 6)
    assert all(isinstance(b, BasicBlock) for b in m.blocks) and m.head.pred.in_channels == deep.head.pred.in_channels
