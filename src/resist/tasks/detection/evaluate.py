"""Detection evaluation: the test loss (the paper's metric, §5 and Table 6) and VOC mAP at IoU 0.5.

Detections are decoded as YOLOv2 does (score = objectness x class probability, boxes clipped to the
image), kept above ``conf_thresh``, then suppressed per class (:func:`~.boxes.batched_nms`).

mAP follows the VOC devkit (``VOCevaldet.m``; py-faster-rcnn's ``voc_eval.py``): per class, detections
of all images sorted by score; each is matched to the truth of its image and class with the highest
IoU; IoU > 0.5 with a not yet matched truth is a true positive, with an already matched one a false
positive, with a ``difficult`` truth neither (ignored), and no truth above 0.5 a false positive.
Difficult truths do not count towards recall. AP is then the 11-point interpolated precision of VOC
2007 (``map50_voc07``) or the area under the monotone precision envelope of VOC 2010+ (``map50``);
mAP is their mean over the classes with at least one non-difficult truth, in percent. Boxes are
continuous image fractions, so the devkit's "+1 pixel" in widths is not applied (the tests cross-check
the matching and the curve against pycocotools, which has none either).
"""

from __future__ import annotations

import math
import contextlib
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .boxes import batched_nms, box_iou
from .loss import YOLOv2Loss, decode_boxes
from ...data.voc import Targets

Dets = tuple[Tensor, Tensor, Tensor]  # boxes (K, 4), scores (K,), labels (K,)
Truth = tuple[Tensor, Tensor, Tensor]  # boxes (N, 4), labels (N,), difficult (N,)


@torch.no_grad()
def postprocess(output: Tensor, anchors: Sequence[tuple[float, float]], conf_thresh: float = 0.005,
                nms_iou: float = 0.45, pre_nms: int = 1000, max_dets: int = 100) -> list[Dets]:
    """Raw output (B, A, H, W, 5 + C) -> per image (boxes (K, 4) image fractions, scores, labels).

    Of the (box, class) pairs scoring above ``conf_thresh``, the ``pre_nms`` best go through per-class
    NMS at ``nms_iou`` (YOLOv2's 0.45) and the ``max_dets`` best survivors are kept (the usual caps, so
    that an untrained network's thousands of candidates stay cheap).
    """
    out = output.float().contiguous()
    b, _, _, _, d = out.shape
    boxes = decode_boxes(out, torch.tensor(anchors, device=out.device)).clamp(0, 1).view(b, -1, 4)
    scores = (out[..., 4:5].sigmoid() * out[..., 5:].softmax(-1)).view(b, -1, d - 5)  # (B, A*H*W, C)
    result = []
    for k in range(b):
        flat = scores[k].flatten()
        cand = (flat > conf_thresh).nonzero().squeeze(1)
        if len(cand) > pre_nms:
            cand = cand[flat[cand].topk(pre_nms).indices]
        box, score, label = boxes[k][cand // (d - 5)], flat[cand], cand % (d - 5)
        keep = batched_nms(box, score, label, nms_iou)[:max_dets]
        result.append((box[keep].cpu(), score[keep].cpu(), label[keep].cpu()))
    return result


def interpolated_ap(recall: Tensor, precision: Tensor, method: str = "area") -> float:
    """AP of a precision/recall curve (detections in descending score order).

    ``"voc07"``: mean over recall r in {0, 0.1, ..., 1} of the best precision at recall >= r (VOC 2007);
    ``"area"``: area under the precision envelope, summed where recall changes (VOC 2010+);
    ``"coco101"``: as pycocotools, the envelope sampled at recall 0, 0.01, ..., 1 (for cross-checks).
    """
    rec, prec = recall.double(), precision.double()
    if method == "voc07":
        # The devkit's grid, np.arange(0., 1.1, 0.1): i * 0.1 in float64 (0.30000000000000004 for 0.3). A
        # float32 grid puts 0.1 at 0.1000000015 and leaves out a recall of exactly 0.1.
        grid = (torch.arange(11, dtype=torch.float64) * 0.1).tolist()
        return sum((prec[rec >= t].max().item() if (rec >= t).any() else 0.0) for t in grid) / 11
    env = torch.cat([prec, prec.new_zeros(1)]).flip(0).cummax(0).values.flip(0)  # envelope[i] = max(prec[i:])
    if method == "area":
        mrec = torch.cat([rec.new_zeros(1), rec])
        return ((mrec[1:] - mrec[:-1]) * env[:-1]).sum().item()
    if method == "coco101":
        # pycocotools' recall grid np.linspace(0, 1, 101) is i * 0.01 in float64, bit for bit (a recall
        # of exactly 7/100 must land on the same side of 0.07 as there).
        thresholds = torch.arange(101, dtype=torch.float64) * 0.01
        thresholds[-1] = 1.0
        idx = torch.searchsorted(rec.contiguous(), thresholds, side="left")
        return torch.where(idx < len(rec), env[idx.clamp(max=len(rec))], 0.0).mean().item()
    raise ValueError(f"unknown AP method {method!r}")


def match_class(dets: list[tuple[Tensor, Tensor]], truths: list[tuple[Tensor, Tensor]],
                iou_threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor, int]:
    """VOC matching for one class over all images.

    ``dets[k]`` = (boxes (K, 4), scores (K,)) and ``truths[k]`` = (boxes (N, 4), difficult (N,)) of image k.
    Returns (scores, tp, fp) over the non-ignored detections in descending score order and the number
    of non-difficult truths.
    """
    all_scores, all_tp, all_fp = [], [], []
    npos = 0
    for (dbox, dscore), (gbox, gdiff) in zip(dets, truths):
        npos += int((~gdiff).sum())
        if len(dscore) == 0:
            continue
        order = torch.sort(dscore, descending=True, stable=True).indices
        dbox, dscore = dbox[order], dscore[order]
        tp = torch.zeros(len(dscore), dtype=torch.bool)
        ignore = torch.zeros(len(dscore), dtype=torch.bool)
        if len(gbox):
            iou = box_iou(dbox.double(), gbox.double())  # (K, N)
            best, arg = iou.max(1)
            # Matching is sequential in score order only among detections that reach some truth.
            taken = torch.zeros(len(gbox), dtype=torch.bool)
            for i in (best > iou_threshold).nonzero().squeeze(1).tolist():
                j = int(arg[i])
                if gdiff[j]:
                    ignore[i] = True
                elif not taken[j]:
                    tp[i], taken[j] = True, True
        all_scores.append(dscore[~ignore])
        all_tp.append(tp[~ignore])
        all_fp.append(~tp[~ignore])
    if not all_scores:
        empty = torch.zeros(0)
        return empty, empty.bool(), empty.bool(), npos
    scores = torch.cat(all_scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    return scores[order], torch.cat(all_tp)[order], torch.cat(all_fp)[order], npos


def voc_ap_per_class(detections: Sequence[Dets], truths: Sequence[Truth], num_classes: int,
                     iou_threshold: float = 0.5, methods: Sequence[str] = ("voc07", "area")) -> dict[str, list[float]]:
    """AP of every class by each of ``methods`` (NaN for a class with no non-difficult truth)."""
    out: dict[str, list[float]] = {m: [] for m in methods}
    for c in range(num_classes):
        dets = [(b[l == c], s[l == c]) for b, s, l in detections]
        gts = [(b[l == c], d[l == c]) for b, l, d in truths]
        _, tp, fp, npos = match_class(dets, gts, iou_threshold)
        if npos == 0:
            for m in methods:
                out[m].append(math.nan)
            continue
        ctp, cfp = tp.double().cumsum(0), fp.double().cumsum(0)
        recall = ctp / npos
        precision = ctp / (ctp + cfp).clamp(min=torch.finfo(torch.float64).eps)
        for m in methods:
            out[m].append(interpolated_ap(recall, precision, m))
    return out


def mean_ap(aps: Sequence[float]) -> float:
    """Mean of the defined (non-NaN) APs, in percent; NaN if none is defined."""
    defined = [a for a in aps if not math.isnan(a)]
    return 100.0 * sum(defined) / len(defined) if defined else math.nan


class DetectionEvaluator:
    """Accumulates a test set batch by batch: ``update(output, targets)``, then ``compute()``.

    The caller runs the model (in whatever BatchNorm mode it evaluates in); the evaluator takes the raw
    output, adds the batch's loss to the test loss and keeps the image's decoded detections and truths
    on the CPU (at most ``max_dets`` per image).
    """

    def __init__(self, loss_fn: YOLOv2Loss, num_classes: int, conf_thresh: float = 0.005, nms_iou: float = 0.45,
                 pre_nms: int = 1000, max_dets: int = 100, iou_threshold: float = 0.5):
        self.loss_fn, self.num_classes, self.iou_threshold = loss_fn, num_classes, iou_threshold
        self.post = dict(conf_thresh=conf_thresh, nms_iou=nms_iou, pre_nms=pre_nms, max_dets=max_dets)
        self.loss_sum, self.images = 0.0, 0
        self.detections: list[Dets] = []
        self.truths: list[Truth] = []

    @torch.no_grad()
    def update(self, output: Tensor, targets: Targets) -> None:
        b = output.shape[0]
        self.loss_sum += float(self.loss_fn(output, targets)) * b
        self.images += b
        self.detections += postprocess(output, self.loss_fn.anchors, **self.post)
        t = targets.to("cpu")
        for k in range(b):
            v = t.labels[k] >= 0
            self.truths.append((t.boxes[k][v], t.labels[k][v], t.difficult[k][v]))

    def compute(self) -> dict[str, float | list[float]]:
        """``test_loss`` (mean per image), ``map50_voc07`` and ``map50`` (percent), per-class ``ap_voc07`` and
        ``ap`` (fractions)."""
        if self.images == 0:
            raise ValueError("no test batches were evaluated")
        aps = voc_ap_per_class(self.detections, self.truths, self.num_classes, self.iou_threshold)
        return {"test_loss": self.loss_sum / self.images, "map50_voc07": mean_ap(aps["voc07"]),
                "map50": mean_ap(aps["area"]), "ap_voc07": aps["voc07"], "ap": aps["area"]}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Targets]], loss_fn: YOLOv2Loss,
             device: torch.device | str = "cpu", **evaluator_kw) -> dict[str, float | list[float]]:
    """The test loss and mAP of ``model`` (put in eval mode: BatchNorm running statistics) over ``batches``.

    ``evaluator_kw`` go to :class:`DetectionEvaluator`; the model's ``num_classes`` is used.
    """
    model.eval()
    ev = DetectionEvaluator(loss_fn, model.num_classes, **evaluator_kw)
    for x, targets in batches:
        ev.update(model(x.to(device)), targets.to(device))
    return ev.compute()


class DetectionScores:
    """The detection task's evaluator for the trainer (``resist.algorithms.base.Evaluator``): the test
    loss (the paper's metric, Table 6) and mAP@0.5 of a whole model, with the BatchNorm choice
    ``bn_eval`` of §2.6 (``average``: running statistics; ``batch``: each test batch's own;
    ``recalibrate``: re-estimated on ``recal()`` training batches first).

    ``test()`` gives a fresh iterable of (x, :class:`Targets`) batches. Metrics: ``test/loss`` (mean per
    image), ``test/map50`` (VOC 2010+ area) and ``test/map50_voc07`` (11-point), in percent. There is no
    ``predict`` / ``score``: those serve shallow ensembles, whose averaged class scores have no
    counterpart for raw box predictions (the config refuses ``--algo ensemble`` for detection).
    """

    names = ("test/loss", "test/map50", "test/map50_voc07")

    def __init__(self, test: Callable[[], Iterable[tuple[Tensor, Targets]]], recal: Callable[[], Iterable] | None,
                 bn_eval: str, device: torch.device, loss_fn: YOLOv2Loss, num_classes: int):
        self.test, self.recal, self.bn_eval, self.device = test, recal, bn_eval, device
        self.loss_fn, self.num_classes = loss_fn, num_classes

    @torch.no_grad()
    def metric(self, model: nn.Module) -> dict[str, float]:
        from ..evaluation import recalibrate, test_batch_statistics

        if self.bn_eval == "recalibrate":
            recalibrate(model, self.recal(), self.device)
        model.eval()
        ev = DetectionEvaluator(self.loss_fn, self.num_classes)
        with test_batch_statistics(model) if self.bn_eval == "batch" else contextlib.nullcontext():
            for x, targets in self.test():
                ev.update(model(x.to(self.device)).float(), targets.to(self.device))
        r = ev.compute()
        return {"test/loss": r["test_loss"], "test/map50": r["map50"], "test/map50_voc07": r["map50_voc07"]}
