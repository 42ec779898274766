"""The YOLOv2 loss (Redmon & Farhadi 2017, "YOLO9000"; darknet's ``region_layer.c`` with
``cfg/yolo-voc.cfg``: object_scale 5, noobject_scale 1, class_scale 1, coord_scale 1, thresh 0.6,
rescore 1, softmax classes).

Per image, with the grid of W x H cells and A anchors (w_a, h_a fractions of the image):

* prediction at cell (i, j), anchor a: box centre ((i + sigmoid(tx)) / W, (j + sigmoid(ty)) / H),
  size (w_a exp(tw), h_a exp(th)); objectness sigmoid(to); class softmax over the logits.
* each ground-truth box is assigned to the cell holding its centre and the anchor whose shape
  (centred at the origin) has the highest IoU with its own; there
  - box:    coord_scale (2 - w h) [(sigmoid(tx) - tx*)^2 + (sigmoid(ty) - ty*)^2 + (tw - tw*)^2 + (th - th*)^2]
            with tx* = W cx - i, ty* = H cy - j, tw* = log(w / w_a), th* = log(h / h_a);
  - object: object_scale (sigmoid(to) - IoU(predicted box, truth))^2 (``rescore``; else target 1);
  - class:  class_scale x cross-entropy of the softmax (darknet's softmax delta is its gradient).
* every other prediction: noobject_scale sigmoid(to)^2, unless its box overlaps some truth with
  IoU > ``ignore_thresh`` (then it is neither pushed up nor down).

VOC ``difficult`` boxes are kept out of the loss: they are assigned nothing, but a prediction on one
(by the IoU rule or at its own cell and anchor) is not pushed towards "no object" either, just as
evaluation ignores detections of them. When two truths fall on one cell and anchor, the later one
counts (darknet overwrites). Darknet's first-12,800-images term that pulls boxes towards the anchors
is left out. The loss is summed over cells and averaged over the images of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_iou, cxcywh_to_xyxy
from ...data.voc import Targets


def decode_boxes(output: Tensor, anchors: Tensor) -> Tensor:
    """(B, A, H, W, 5 + C) raw output -> (B, A, H, W, 4) boxes x1 y1 x2 y2 as fractions of the image."""
    _, _, h, w, _ = output.shape
    gy, gx = torch.meshgrid(torch.arange(h, device=output.device, dtype=output.dtype),
                            torch.arange(w, device=output.device, dtype=output.dtype), indexing="ij")
    cx = (gx + output[..., 0].sigmoid()) / w
    cy = (gy + output[..., 1].sigmoid()) / h
    # exp is capped so that an untrained network's boxes stay finite (e^10 is 22,000 anchors wide).
    bw = anchors[:, 0].view(1, -1, 1, 1) * output[..., 2].clamp(max=10).exp()
    bh = anchors[:, 1].view(1, -1, 1, 1) * output[..., 3].clamp(max=10).exp()
    return cxcywh_to_xyxy(torch.stack([cx, cy, bw, bh], -1))


class YOLOv2Loss:
    """``loss(output, targets)`` -> scalar; ``loss(output, targets, parts=True)`` -> (scalar, dict of
    the four terms as floats). ``output`` is the model's (B, A, H, W, 5 + C), ``targets`` a
    :class:`~resist.data.voc.Targets` on the same device. Computed in float32 whatever the
    autocast dtype of the forward pass."""

    def __init__(self, anchors: Sequence[tuple[float, float]], *, ignore_thresh: float = 0.6,
                 coord_scale: float = 1.0, object_scale: float = 5.0, noobject_scale: float = 1.0,
                 class_scale: float = 1.0, rescore: bool = True):
        self.anchors = tuple((float(w), float(h)) for w, h in anchors)
        self.ignore_thresh, self.rescore = ignore_thresh, rescore
        self.coord_scale, self.object_scale = coord_scale, object_scale
        self.noobject_scale, self.class_scale = noobject_scale, class_scale

    def __call__(self, output: Tensor, targets: Targets, parts: bool = False):
        out = output.float().contiguous()  # (B, A, H, W, 5 + C); the head returns a permuted view
        b, a, h, w, d = out.shape
        if a != len(self.anchors):
            raise ValueError(f"output has {a} anchors per cell, the loss {len(self.anchors)}")
        anchors = torch.tensor(self.anchors, device=out.device)  # (A, 2)
        gt, labels, difficult = targets.boxes.float(), targets.labels, targets.difficult
        valid = labels >= 0  # (B, M)

        # Predictions overlapping any truth (difficult ones included) above the threshold are ignored.
        with torch.no_grad():
            pred = decode_boxes(out, anchors)  # (B, A, H, W, 4)
            iou = box_iou(pred.view(b, -1, 4), gt)  # (B, A*H*W, M)
            best = iou.masked_fill(~valid[:, None, :], 0).amax(-1) if gt.shape[1] else iou.new_zeros(b, a * h * w)
            noobj = (best <= self.ignore_thresh).view(b, a, h, w)

        # Assignment: the cell of the box centre, the anchor of the best shape IoU.
        bi, mi = valid.nonzero(as_tuple=True)  # (K,), (K,)
        box = gt[bi, mi]  # (K, 4)
        cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
        bw, bh = (box[:, 2] - box[:, 0]).clamp(min=1e-9), (box[:, 3] - box[:, 1]).clamp(min=1e-9)
        ci = (cx * w).floor().long().clamp(0, w - 1)
        cj = (cy * h).floor().long().clamp(0, h - 1)
        inter = torch.minimum(bw[:, None], anchors[:, 0]) * torch.minimum(bh[:, None], anchors[:, 1])
        shape_iou = inter / (bw[:, None] * bh[:, None] + anchors[:, 0] * anchors[:, 1] - inter)  # (K, A)
        ai = shape_iou.argmax(1)
        slot = ((bi * a + ai) * h + cj) * w + ci  # flat index into (B, A, H, W)

        noobj.view(-1)[slot] = False  # nothing is pushed to "no object" where a truth (even difficult) sits
        pos = ~difficult[bi, mi]
        # Where several truths share a slot, the last (highest ordinal) wins, as darknet overwrites.
        ordinal = torch.arange(len(slot), device=out.device)
        winner = torch.full((b * a * h * w,), -1, dtype=torch.long, device=out.device)
        winner.scatter_reduce_(0, slot[pos], ordinal[pos], "amax")
        keep = pos & (winner[slot] == ordinal)
        slot, box, cx, cy, bw, bh = slot[keep], box[keep], cx[keep], cy[keep], bw[keep], bh[keep]
        ci, cj, ai, lab = ci[keep], cj[keep], ai[keep], labels[bi, mi][keep]

        p = out.view(-1, d)[slot]  # (K', 5 + C)
        target_xy = torch.stack([cx * w - ci, cy * h - cj], -1)
        target_wh = torch.stack([torch.log(bw / anchors[ai, 0]), torch.log(bh / anchors[ai, 1])], -1)
        scale = self.coord_scale * (2 - bw * bh)
        coord = (scale * ((p[:, :2].sigmoid() - target_xy).square().sum(-1)
                          + (p[:, 2:4] - target_wh).square().sum(-1))).sum()

        obj_p = out[..., 4].sigmoid()  # (B, A, H, W)
        if self.rescore:
            with torch.no_grad():
                obj_target = box_iou(pred.view(-1, 4)[slot][:, None], box[:, None]).view(-1)
        else:
            obj_target = torch.ones(len(slot), device=out.device)
        obj = self.object_scale * (obj_p.view(-1)[slot] - obj_target).square().sum()
        noobj_loss = self.noobject_scale * obj_p[noobj].square().sum()
        cls = self.class_scale * F.cross_entropy(p[:, 5:], lab, reduction="sum")

        loss = (coord + obj + noobj_loss + cls) / b
        if not parts:
            return loss
        return loss, {"coord": coord.item() / b, "object": obj.item() / b, "noobject": noobj_loss.item() / b,
                      "class": cls.item() / b}
