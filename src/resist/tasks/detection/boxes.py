"""Box arithmetic in torch alone (no torchvision): IoU, format conversion and non-maximum suppression.

Boxes are ``(x1, y1, x2, y2)`` in continuous coordinates (any unit: the detection task uses fractions
of the input image). IoU is invariant under scaling each axis, so fractions of a resized image give
the same IoU as pixels of the original; no VOC-devkit "+1" is added to widths (see ``evaluate.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...): area of each box (0 for an empty one)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: a (..., N, 4) and b (..., M, 4) -> (..., N, M); 0 where both boxes are empty."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])  # (..., N, M, 2)
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    c, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat([c - half, c + half], -1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when it overlaps a kept, higher-scoring box with IoU > ``iou_threshold`` (the rule
    of torchvision.ops.nms and of darknet). Computed exactly as the greedy loop but in tensor steps, by
    Cluster-NMS's fixed-point iteration (Zheng et al. 2020, "Enhancing Geometric Factors in Model
    Learning and Inference for Object Detection and Instance Segmentation", §4): with the boxes sorted
    by score and ``C[i, j]`` = "i < j and IoU > t", ``keep[j] = not any(keep[i] and C[i, j])``. That
    recurrence has one solution, and iteration k from all-True fixes the first k entries, so it ends
    after at most N (in practice a few) passes.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # Stable sort: equal scores keep their input order, so ties are broken the same way every run.
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    over = (box_iou(b, b) > iou_threshold).triu_(diagonal=1)  # (N, N): i suppresses j if kept
    keep = torch.ones(len(b), dtype=torch.bool, device=b.device)
    for _ in range(len(b)):
        new = ~(over & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS per class (boxes of different ``labels`` never suppress each other), highest score first.

    Each class's boxes are shifted by a multiple of the coordinates' span, so that one NMS over all of
    them never overlaps two classes (the offset trick of torchvision's ``batched_nms``).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1
    return nms(boxes + (labels.to(boxes.dtype) * span)[:, None], scores, iou_threshold)
