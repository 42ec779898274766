"""NMS, VOC AP (hand examples and a cross-check against pycocotools), decoding, and evaluate()."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from resist.tasks.detection.boxes import batched_nms, box_iou, nms
from resist.tasks.detection.evaluate import (evaluate, interpolated_ap, match_class, mean_ap, postprocess,
                                             voc_ap_per_class)
from resist.tasks.detection.loss import YOLOv2Loss
from resist.models.yolo import VOC_ANCHORS, yolo_resnet101
from resist.data.voc import TEST_SPLITS, Targets, VOCDetection, collate, eval_batches

from conftest import make_voc_like


# ----------------------------------------------------------------------------------------------- NMS

def greedy_nms(boxes, scores, t):
    """The textbook loop (torchvision's CPU kernel), one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep, removed = [], set()
    for n, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[n + 1:]:
            if box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() > t:
                removed.add(j)
    return keep


def random_boxes(g, n):
    xy = torch.rand(n, 2, generator=g) * 0.8
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [0.3, 0.5])
def test_nms_equals_the_greedy_loop(seed, t):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(g, 60)
    scores = torch.rand(60, generator=g)
    scores[10:20] = scores[0]  # ties are broken by input order
    assert nms(boxes, scores, t).tolist() == greedy_nms(boxes, scores, t)


def test_nms_keeps_the_best_of_a_cluster_and_separate_boxes():
    boxes = torch.tensor([[0, 0, 1, 1], [0.05, 0, 1.05, 1], [2, 2, 3, 3], [0.1, 0.1, 1.1, 1.1]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.9, 0.1, 0.7])
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 3, 2]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_batched_nms_never_suppresses_across_classes():
    g = torch.Generator().manual_seed(3)
    boxes, scores = random_boxes(g, 80), torch.rand(80, generator=g)
    labels = torch.randint(0, 4, (80,), generator=g)
    kept = set(batched_nms(boxes, scores, labels, 0.4).tolist())
    expected = set()
    for c in range(4):
        idx = (labels == c).nonzero().squeeze(1)
        expected |= {int(idx[k]) for k in greedy_nms(boxes[idx], scores[idx], 0.4)}
    assert kept == expected
    order = batched_nms(boxes, scores, labels, 0.4)
    assert (scores[order][:-1] >= scores[order][1:]).all()  # best first


# --------------------------------------------------------------------------------------- AP by hand

def test_interpolated_ap_by_hand():
    # 4 truths; detections in score order: TP FP TP TP FP.
    tp = torch.tensor([1, 0, 1, 1, 0], dtype=torch.float64)
    rec = tp.cumsum(0) / 4  # .25 .25 .5 .75 .75
    prec = tp.cumsum(0) / torch.arange(1, 6)  # 1 .5 .667 .75 .6
    # Area: recall steps of .25 at envelope precisions 1, .75, .75.
    assert interpolated_ap(rec, prec, "area") == pytest.approx(0.25 + 0.25 * 0.75 + 0.25 * 0.75)
    # 11 points: recall 0, .1, .2 -> 1; .3 .. .7 -> .75; .8 .. 1 -> 0.
    assert interpolated_ap(rec, prec, "voc07") == pytest.approx((3 * 1 + 5 * 0.75) / 11)
    perfect = torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0])
    assert interpolated_ap(*perfect, "area") == pytest.approx(1.0)
    assert interpolated_ap(*perfect, "voc07") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        interpolated_ap(rec, prec, "coco")


def test_voc07_ap_on_the_devkits_recall_grid():
    """Recalls that land exactly on the grid (k truths of 10, 1 of 5...) are where a float32 grid
    (0.1 stored as 0.1000000015) and the devkit's float64 np.arange part ways."""
    rec, prec = torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    # Recall >= 0 and >= 0.1: precision 1; >= 0.2: 0.5; above: nothing.
    assert interpolated_ap(rec, prec, "voc07") == pytest.approx((2 * 1.0 + 0.5) / 11, abs=1e-12)
    assert py_faster_rcnn_voc_ap(rec.numpy(), prec.numpy(), True) == pytest.approx((2 * 1.0 + 0.5) / 11, abs=1e-12)
    rng = np.random.default_rng(0)
    for npos in (5, 10, 20, 3, 7):
        for _ in range(40):
            tp = rng.random(rng.integers(1, 30)) < 0.5
            ctp, cfp = np.cumsum(tp).astype(np.float64), np.cumsum(~tp).astype(np.float64)
            ctp = np.minimum(ctp, npos)
            rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
            assert interpolated_ap(torch.from_numpy(rec), torch.from_numpy(prec), "voc07") == pytest.approx(
                py_faster_rcnn_voc_ap(rec, prec, True), abs=1e-12)


def test_voc_matching_rules_by_hand():
    truth = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]]), torch.tensor([False, True])
    dets = torch.tensor([
        [0.0, 0.0, 0.4, 0.4],     # 0.9: TP
        [0.01, 0.0, 0.41, 0.4],   # 0.8: the same truth again -> FP
        [0.5, 0.5, 0.9, 0.9],     # 0.7: on the difficult truth -> ignored
        [0.5, 0.5, 0.89, 0.9],    # 0.6: on it again -> ignored again
        [0.0, 0.0, 0.2, 0.4],     # 0.5: IoU 0.5, not above it -> FP
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    s, tp, fp, npos = match_class([(dets, scores)], [truth])
    assert npos == 1
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.5]) and tp.tolist() == [True, False, False]
    assert fp.tolist() == [False, True, True]
    # A class with no non-difficult truth has no AP and is left out of the mean.
    aps = voc_ap_per_class([(dets, scores, torch.zeros(5, dtype=torch.int64))],
                           [(truth[0], torch.tensor([0, 1]), truth[1])], num_classes=2)
    assert aps["area"][0] == pytest.approx(1.0) and math.isnan(aps["area"][1])
    assert mean_ap(aps["area"]) == pytest.approx(100.0)


# ------------------------------------------------------------------------------ against pycocotools

def fixture_set(seed, images=40, classes=4):
    """Truths in separate cells of a 3 x 3 grid (so each detection reaches at most one truth, where VOC's
    and COCO's matching agree), some difficult; detections: jittered copies of truths (some of another
    class, some twice) and false positives that overlap no truth by more than 40% of their own area."""
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for _ in range(images):
        cells = rng.choice(9, size=rng.integers(0, 6), replace=False)
        gb, gl, gd = [], [], []
        for c in cells:
            x0, y0 = (c % 3) / 3 + rng.uniform(0, 0.1), (c // 3) / 3 + rng.uniform(0, 0.1)
            gb.append([x0, y0, x0 + rng.uniform(0.1, 0.22), y0 + rng.uniform(0.1, 0.22)])
            gl.append(int(rng.integers(classes)))
            gd.append(bool(rng.random() < 0.15))
        gb = torch.tensor(gb, dtype=torch.float64).view(-1, 4)
        db, dl = [], []
        for box, label in zip(gb.tolist(), gl):
            for _copy in range(int(rng.choice([0, 1, 1, 1, 2]))):
                w, h = box[2] - box[0], box[3] - box[1]
                jitter = rng.uniform(-0.04, 0.04, 4) * [w, h, w, h]
                db.append([b + j for b, j in zip(box, jitter)])
                dl.append(label if rng.random() < 0.85 else int(rng.integers(classes)))
        while len(db) < len(gb) + 3:
            x0, y0 = rng.uniform(0, 0.9, 2)
            size = rng.uniform(0.03, 0.1, 2)
            cand = torch.tensor([[x0, y0, x0 + size[0], y0 + size[1]]], dtype=torch.float64)
            lt = torch.maximum(cand[:, None, :2], gb[None, :, :2])
            rb = torch.minimum(cand[:, None, 2:], gb[None, :, 2:])
            covered = (rb - lt).clamp(min=0).prod(-1) / ((cand[0, 2] - cand[0, 0]) * (cand[0, 3] - cand[0, 1]))
            if covered.numel() == 0 or covered.max() < 0.4:
                db.append(cand[0].tolist())
                dl.append(int(rng.integers(classes)))
        scores = torch.tensor(rng.permutation(len(db)) + rng.uniform(0, 0.5, len(db)), dtype=torch.float64)
        truths.append((gb, torch.tensor(gl, dtype=torch.int64), torch.tensor(gd, dtype=torch.bool)))
        dets.append((torch.tensor(db, dtype=torch.float64).view(-1, 4), scores / scores.max(),
                     torch.tensor(dl, dtype=torch.int64)))
    return dets, truths


def coco_eval(dets, truths, classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):  # fractions -> "pixels" of a 1000 x 1000 image (a uniform scale: IoUs unchanged)
        x1, y1, x2, y2 = (1000 * v for v in b)
        return [x1, y1, x2 - x1, y2 - y1]

    gt = {"images": [{"id": k, "width": 1000, "height": 1000} for k in range(len(truths))],
          "categories": [{"id": c + 1} for c in range(classes)], "annotations": []}
    for k, (b, l, d) in enumerate(truths):
        for box, label, diff in zip(b.tolist(), l.tolist(), d.tolist()):
            xywh_box = xywh(box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k, "category_id": label + 1,
                                      "bbox": xywh_box, "area": xywh_box[2] * xywh_box[3], "iscrowd": int(diff)})
    results = [{"image_id": k, "category_id": int(label) + 1, "bbox": xywh(box), "score": float(s)}
               for k, (b, s, l) in enumerate(dets) for box, s, label in zip(b.tolist(), s.tolist(), l.tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        E = COCOeval(coco, coco.loadRes(results), "bbox")
        E.params.iouThrs = np.array([0.5])
        E.evaluate()
        E.accumulate()
    return E


def py_faster_rcnn_voc_ap(rec, prec, use_07_metric):
    """voc_ap of py-faster-rcnn's lib/datasets/voc_eval.py (Girshick), verbatim in numpy."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def coco_matches_as_voc_ap(E, k, use_07_metric):
    """VOC AP of class k from pycocotools' own per-image matching (its evalImgs)."""
    imgs = [e for e in E.evalImgs if e is not None and e["category_id"] == k + 1 and e["aRng"] == [0, 1e10]]
    scores = np.concatenate([e["dtScores"] for e in imgs])
    matched = np.concatenate([e["dtMatches"][0] for e in imgs]) > 0
    ignored = np.concatenate([e["dtIgnore"][0] for e in imgs]).astype(bool)
    npos = sum(int((~np.asarray(e["gtIgnore"], dtype=bool)).sum()) for e in imgs)
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[order], ignored[order]
    tp = np.cumsum(matched & ~ignored)
    fp = np.cumsum(~matched & ~ignored)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return py_faster_rcnn_voc_ap(rec[~ignored], prec[~ignored], use_07_metric)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_agrees_with_pycocotools(seed):
    classes = 4
    dets, truths = fixture_set(seed, classes=classes)
    E = coco_eval(dets, truths, classes)
    ours = voc_ap_per_class(dets, truths, classes, methods=("coco101", "voc07", "area"))
    coco_ap = [float(np.mean(E.eval["precision"][0, :, k, 0, -1])) for k in range(classes)]
    assert all(a > 0 for a in coco_ap) and len(set(coco_ap)) > 1  # the fixture is not degenerate
    # pycocotools' own AP (101-point interpolation) of our matching and curve:
    assert ours["coco101"] == pytest.approx(coco_ap, abs=1e-9)
    # VOC's 11-point and area AP of pycocotools' matching, integrated by py-faster-rcnn's voc_ap:
    for k in range(classes):
        assert ours["voc07"][k] == pytest.approx(coco_matches_as_voc_ap(E, k, True), abs=1e-9)
        assert ours["area"][k] == pytest.approx(coco_matches_as_voc_ap(E, k, False), abs=1e-9)


# ------------------------------------------------------------------------------ decoding, evaluate()

def oracle_output(t: Targets, num_classes, grid=13, anchors=VOC_ANCHORS):
    """Raw output that predicts every truth exactly at the slot the loss assigns it (and nothing else)."""
    a = torch.tensor(anchors)
    out = torch.full((len(t), len(anchors), grid, grid, 5 + num_classes), -20.0)
    used = set()
    for k in range(len(t)):
        for box, label in zip(t.boxes[k][t.valid[k]].tolist(), t.labels[k][t.valid[k]].tolist()):
            cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
            i, j = int(cx * grid), int(cy * grid)
            inter = torch.minimum(a[:, 0], torch.tensor(w)) * torch.minimum(a[:, 1], torch.tensor(h))
            n = int((inter / (w * h + a[:, 0] * a[:, 1] - inter)).argmax())
            assert (k, n, j, i) not in used, "two truths on one slot: the oracle cannot predict both"
            used.add((k, n, j, i))
            sx, sy = cx * grid - i, cy * grid - j
            out[k, n, j, i, :5] = torch.tensor([math.log(sx / (1 - sx)), math.log(sy / (1 - sy)),
                                                math.log(w / a[n, 0]), math.log(h / a[n, 1]), 20.0])
            out[k, n, j, i, 5 + label] = 20.0
    return out


def test_postprocess_recovers_an_oracles_boxes_for_a_perfect_map(voc_tree):
    classes = list(make_voc_like.CLASSES)
    ds = VOCDetection(voc_tree, TEST_SPLITS, size=32, classes=classes)
    _, t = collate([ds[i] for i in range(len(ds))])
    dets = postprocess(oracle_output(t, len(classes)), VOC_ANCHORS)
    for k, (boxes, scores, labels) in enumerate(dets):
        v = t.valid[k]
        assert len(boxes) == int(v.sum()) and (scores > 0.99).all()
        assert box_iou(boxes, t.boxes[k][v]).max(1).values.min() > 0.999
        assert sorted(labels.tolist()) == sorted(t.labels[k][v].tolist())
    truths = [(t.boxes[k][t.valid[k]], t.labels[k][t.valid[k]], t.difficult[k][t.valid[k]]) for k in range(len(t))]
    aps = voc_ap_per_class(dets, truths, len(classes))
    assert mean_ap(aps["voc07"]) == pytest.approx(100.0) and mean_ap(aps["area"]) == pytest.approx(100.0)


def test_postprocess_caps_and_thresholds():
    out = torch.randn(2, 5, 6, 6, 5 + 4, generator=torch.Generator().manual_seed(0))
    dets = postprocess(out, VOC_ANCHORS, conf_thresh=0.005, max_dets=7)
    assert all(len(b) == 7 for b, _, _ in dets)
    for boxes, scores, labels in dets:
        assert ((boxes >= 0) & (boxes <= 1)).all() and (scores[:-1] >= scores[1:]).all()
        assert labels.max() < 4
    strict = postprocess(out, VOC_ANCHORS, conf_thresh=0.3)
    assert all((s > 0.3).all() for _, s, _ in strict)


def test_evaluate_a_tiny_model_over_loader_batches(voc_tree):
    classes = list(make_voc_like.CLASSES)
    ds = VOCDetection(voc_tree, TEST_SPLITS, size=64, classes=classes)
    torch.manual_seed(0)
    model = yolo_resnet101(num_classes=len(classes), width=1 / 16)
    loss_fn = YOLOv2Loss(model.anchors)
    result = evaluate(model, eval_batches(ds, batch_size=3, num_workers=0), loss_fn)
    assert set(result) == {"test_loss", "map50_voc07", "map50", "ap_voc07", "ap"}
    model.eval()
    with torch.no_grad():  # the test loss is the mean per image over uneven batches (3, 3, 2)
        per_image = [loss_fn(model(x), t).item() * len(t) for x, t in eval_batches(ds, batch_size=3, num_workers=0)]
    assert result["test_loss"] == pytest.approx(sum(per_image) / len(ds), rel=1e-5)
    assert 0 <= result["map50"] <= 100 and 0 <= result["map50_voc07"] <= 100
    assert len(result["ap"]) == len(classes)
