"""YOLOv2-style detectors on ResNet backbones (paper §5: "a ResNet101 backbone followed by a detection
layer, i.e. a convolution that outputs anchor box predictions"; Redmon & Farhadi 2017, "YOLO9000:
Better, Faster, Stronger").

A detector is a :class:`resist.models.resnet.ResNet` whose classification head (pool + linear) is
replaced by a :class:`YOLOHead`. Everything else is the backbone's own, so the model keeps the
protocol ResIST relies on: ``stem``, a flat ``blocks`` list, ``head``, ``sections``, ``partitionable``
(section 3 but its first block), ``skippable``, ``skip`` and ``set_residual_scale``; its parameters are
named ``stem.*``, ``blocks.<i>.*`` and ``head.*``. The head is shared by all workers and averaged
like the stem. It has no buffers besides BatchNorm's, so a worker can build it on the meta device and
initialize it with ``reset_parameters`` as it does every other part.

Stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) by default, so the network's stride is 32 and a
416-pixel input gives YOLOv2's 13 x 13 grid; ``stem="cifar"`` (stride 8) suits tiny inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .registry import create_model, register_model
from .resnet import ResNet

#: YOLOv2's VOC anchors (darknet cfg/yolo-voc.cfg, k-means on VOC 2007+2012 boxes; Redmon & Farhadi
#: 2017 §2), as (width, height) in cells of its 13 x 13 grid for a 416-pixel input.
YOLOV2_VOC_ANCHORS_13 = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
                         (11.2364, 10.0071))
#: The same anchors as fractions of the image side, which fit any input size and grid.
VOC_ANCHORS: tuple[tuple[float, float], ...] = tuple((w / 13, h / 13) for w, h in YOLOV2_VOC_ANCHORS_13)


class YOLOHead(nn.Module):
    """The detection layer: per cell of the final feature map, A anchors x (4 box + 1 objectness + C
    class) raw predictions.

    ``pre`` holds what the backbone's own head ran before its pooling (BN-ReLU for a pre-activation
    network; nothing for a post-activation one, whose blocks end in ReLU). With ``hidden`` channels a
    3x3 conv-BN-ReLU comes before the 1x1 prediction conv (the "two convs" variant, closer to YOLOv2's
    own head); without, it is the paper's single convolution.

    forward: (B, C_in, H, W) -> (B, A, H, W, 5 + C), last axis ``tx, ty, tw, th, to, class logits``.
    """

    def __init__(self, in_ch: int, num_anchors: int, num_classes: int, pre: Sequence[nn.Module] = (),
                 hidden: int | None = None):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.pre = nn.Sequential(*pre)
        layers: list[nn.Module] = []
        if hidden:
            layers = [nn.Conv2d(in_ch, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True)]
            in_ch = hidden
        self.hidden = nn.Sequential(*layers)
        self.pred = nn.Conv2d(in_ch, num_anchors * (5 + num_classes), 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.pred(self.hidden(self.pre(x)))  # (B, A * (5 + C), H, W)
        b, _, h, w = out.shape
        return out.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)


def attach_yolo_head(model: ResNet, num_classes: int = 20,
                     anchors: Sequence[tuple[float, float]] = VOC_ANCHORS, head_convs: int = 1) -> ResNet:
    """Turn a classification ResNet into a detector in place: its head becomes a :class:`YOLOHead`.

    Sets ``model.anchors`` (what the loss and the decoder need) and ``model.num_classes``.
    ``head_convs`` is 1 (the paper's single conv) or 2 (a 3x3 conv-BN-ReLU of the same width first).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if head_convs not in (1, 2):
        raise ValueError(f"head_convs must be 1 or 2, got {head_convs!r}")
    anchors = tuple((float(w), float(h)) for w, h in anchors)
    if not anchors or not all(w > 0 and h > 0 for w, h in anchors):
        raise ValueError(f"anchors must be positive (width, height) pairs, got {anchors!r}")
    layers = list(model.head)
    pool = next(i for i, m in enumerate(layers) if isinstance(m, nn.AdaptiveAvgPool2d))
    in_ch = next(m for m in layers if isinstance(m, nn.Linear)).in_features
    model.head = YOLOHead(in_ch, len(anchors), num_classes, layers[:pool], in_ch if head_convs == 2 else None)
    model.anchors = anchors
    model.num_classes = num_classes
    return model


def yolo(backbone: str, num_classes: int = 20, width: float = 1.0, *,
         anchors: Sequence[tuple[float, float]] = VOC_ANCHORS, head_convs: int = 1, **kwargs) -> ResNet:
    """A detector on any ResNet of the model registry (``resist.models.create_model(backbone, ...)``);
    ``kwargs`` go to the backbone (``stem`` defaults to ``"imagenet"``, ``layers`` where it takes them)."""
    if backbone in DETECTION_MODELS:  # registered beside the classification models, but already detectors
        raise ValueError(f"{backbone!r} is already a detector; give yolo: a classification ResNet")
    kwargs.setdefault("stem", "imagenet")
    model = create_model(backbone, num_classes=1, width=width, **kwargs)
    if not isinstance(model, ResNet):
        raise ValueError(f"backbone {backbone!r} is not a ResNet")
    return attach_yolo_head(model, num_classes, anchors, head_convs)


@register_model
def yolo_resnet(num_classes: int = 20, width: float = 1.0, *, layers: Sequence[int],
                anchors: Sequence[tuple[float, float]] = VOC_ANCHORS, head_convs: int = 1, stem: str = "imagenet",
                **kwargs) -> ResNet:
    """Paper detector at any depth: post-act basic-block ResNet (``--layers``) + YOLOHead.

    That is its classification ResNet (§2.1) without pre-activation, plus a :class:`YOLOHead` (``layers``
    as in ``resist.models``' ``paper_resnet``)."""
    backbone = ResNet(layers, "basic", preact=False, num_classes=1, width=width, stem=stem, **kwargs)
    return attach_yolo_head(backbone, num_classes, anchors, head_convs)


def _paper_yolo(layers: tuple[int, int, int, int], name: str) -> Callable[..., ResNet]:
    def factory(num_classes: int = 20, width: float = 1.0, **kwargs) -> ResNet:
        return yolo_resnet(num_classes, width, layers=layers, **kwargs)

    factory.__name__ = factory.__qualname__ = name  # the registry name
    return factory


yolo_resnet101 = register_model(_paper_yolo((3, 4, 23, 3), "yolo_resnet101"))
yolo_resnet152 = register_model(_paper_yolo((3, 4, 36, 3), "yolo_resnet152"))
yolo_resnet200 = register_model(_paper_yolo((3, 4, 50, 3), "yolo_resnet200"))
yolo_resnet101.__doc__ = "Paper detector (§5): post-act basic-block ResNet101 [3, 4, 23, 3] + YOLOHead."
yolo_resnet152.__doc__ = "Post-activation basic-block ResNet152 [3, 4, 36, 3] + YOLOHead."
yolo_resnet200.__doc__ = "Post-activation basic-block ResNet200 [3, 4, 50, 3] + YOLOHead."

#: name -> factory(num_classes=20, width=1.0, **kwargs), like the classification registry's entries.
DETECTION_MODELS: dict[str, Callable[..., ResNet]] = {
    "yolo_resnet": yolo_resnet,
    "yolo_resnet101": yolo_resnet101,
    "yolo_resnet152": yolo_resnet152,
    "yolo_resnet200": yolo_resnet200,
}



def create_detection_model(name: str, num_classes: int = 20, width: float = 1.0, **kwargs) -> ResNet:
    """A model of :data:`DETECTION_MODELS`, or ``"yolo:<backbone>"`` for any registered ResNet
    (``"yolo:preact_resnet50"``, ``"yolo:paper_resnet101_post"``)."""
    if name in DETECTION_MODELS:
        return DETECTION_MODELS[name](num_classes=num_classes, width=width, **kwargs)
    if name.startswith("yolo:"):
        return yolo(name[len("yolo:"):], num_classes, width, **kwargs)
    raise ValueError(f"unknown detection model {name!r}; choose one of {', '.join(DETECTION_MODELS)} "
                     f"or yolo:<a registered ResNet>")

