"""The YOLOv2 loss: every term on a case computed by hand, the ignore threshold, difficult boxes, and
learning on a tiny generated set."""

import math

import pytest
import torch

from resist.algorithms.parts import init_model
from resist.tasks.detection.evaluate import DetectionEvaluator
from resist.tasks.detection.loss import YOLOv2Loss, decode_boxes
from resist.models.yolo import yolo_resnet
from resist.data.voc import TRAIN_SPLITS, Targets, VOCDetection, collate

from conftest import make_voc_like

ANCHORS = ((0.25, 0.25), (0.5, 1.0))
C = 3
# One truth: centre (0.7, 0.45), size 0.4 x 0.8 -> cell i = 1, j = 0 of a 2 x 2 grid; anchor 1 fits best
# (shape IoU 0.32 / 0.5 = 0.64 against 0.0625 / 0.32 for anchor 0).
BOX = [0.5, 0.05, 0.9, 0.85]


def targets(boxes, labels, difficult=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).view(1, -1, 4)
    labels = torch.tensor(labels).view(1, -1)
    difficult = torch.zeros_like(labels, dtype=torch.bool) if difficult is None else torch.tensor(difficult).view(1, -1)
    return Targets(boxes, labels, difficult, torch.zeros(1, dtype=torch.int64))


def zero_output():
    return torch.zeros(1, len(ANCHORS), 2, 2, 5 + C, requires_grad=True)  # (B, A, H, W, 5 + C)


def by_hand():
    """The terms for a zero output: every sigmoid is 0.5, every box an anchor at its cell's centre."""
    coord = (2 - 0.4 * 0.8) * ((0.5 - 0.4) ** 2 + (0.5 - 0.9) ** 2 + 2 * math.log(0.8) ** 2)
    # Prediction at the slot: box (0.5, -0.25, 1.0, 0.75); with the truth: inter 0.4 x 0.7, union 0.54.
    obj = 5 * (0.5 - 0.28 / 0.54) ** 2
    # The 7 other predictions overlap the truth by at most IoU 0.41 (anchor 1 at cell (1, 1)): all "no object".
    return {"coord": coord, "object": obj, "noobject": 7 * 0.25, "class": math.log(C)}


def test_every_term_matches_a_hand_computation():
    loss, parts = YOLOv2Loss(ANCHORS)(zero_output(), targets([BOX], [2]), parts=True)
    expected = by_hand()
    assert parts == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-5)


def test_padding_and_batch_size_do_not_change_the_loss():
    one = YOLOv2Loss(ANCHORS)(zero_output(), targets([BOX], [2]))
    padded = YOLOv2Loss(ANCHORS)(zero_output(), targets([BOX, [0, 0, 0, 0]], [2, -1]))
    t = targets([BOX], [2])
    two = YOLOv2Loss(ANCHORS)(torch.zeros(2, 2, 2, 2, 5 + C),
                              Targets(t.boxes.repeat(2, 1, 1), t.labels.repeat(2, 1), t.difficult.repeat(2, 1),
                                      torch.arange(2)))
    assert padded.item() == pytest.approx(one.item()) and two.item() == pytest.approx(one.item())


def test_ignore_threshold_spares_a_good_unassigned_prediction():
    out = torch.zeros(1, 2, 2, 2, 5 + C)
    # Anchor 0 at cell (1, 0) predicts the truth exactly: sigmoid(tx) = 0.4, sigmoid(ty) = 0.9,
    # 0.25 exp(tw) = 0.4, 0.25 exp(th) = 0.8.
    out[0, 0, 0, 1, :4] = torch.tensor([math.log(0.4 / 0.6), math.log(0.9 / 0.1), math.log(1.6), math.log(3.2)])
    decoded = decode_boxes(out, torch.tensor(ANCHORS))[0, 0, 0, 1]
    assert torch.allclose(decoded, torch.tensor(BOX), atol=1e-6)
    _, parts = YOLOv2Loss(ANCHORS)(out, targets([BOX], [2]), parts=True)
    assert parts["noobject"] == pytest.approx(6 * 0.25)
    _, never = YOLOv2Loss(ANCHORS, ignore_thresh=1.01)(out, targets([BOX], [2]), parts=True)
    assert never["noobject"] == pytest.approx(7 * 0.25)


def test_difficult_truths_are_kept_out_of_the_loss():
    loss, parts = YOLOv2Loss(ANCHORS)(zero_output(), targets([BOX], [2], [True]), parts=True)
    # Nothing is assigned, and its own slot is not pushed towards "no object" either (7 of 8 are).
    assert parts == pytest.approx({"coord": 0.0, "object": 0.0, "noobject": 7 * 0.25, "class": 0.0})


def test_no_truths_at_all():
    t = Targets(torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, dtype=torch.bool),
                torch.zeros(1, dtype=torch.int64))
    out = zero_output()
    loss, parts = YOLOv2Loss(ANCHORS)(out, t, parts=True)
    assert parts["noobject"] == pytest.approx(8 * 0.25) and loss.item() == pytest.approx(2.0)
    loss.backward()
    assert torch.isfinite(out.grad).all()


def test_two_truths_on_one_slot_the_later_counts():
    # The same box twice with different labels: one assignment; the class term is the later label's.
    out = torch.zeros(1, 2, 2, 2, 5 + C)
    out[0, 1, 0, 1, 5:] = torch.tensor([0.0, 2.0, -1.0])
    _, parts = YOLOv2Loss(ANCHORS)(out, targets([BOX, BOX], [0, 1]), parts=True)
    logp = torch.log_softmax(torch.tensor([0.0, 2.0, -1.0]), 0)
    assert parts["class"] == pytest.approx(-logp[1].item(), rel=1e-5)
    assert parts["coord"] == pytest.approx(by_hand()["coord"], rel=1e-5)


def test_low_precision_output_is_scored_in_float32():
    out = torch.randn(2, 2, 2, 2, 5 + C, generator=torch.Generator().manual_seed(0))
    t = targets([BOX], [2])
    t = Targets(t.boxes.repeat(2, 1, 1), t.labels.repeat(2, 1), t.difficult.repeat(2, 1), torch.arange(2))
    full, half = YOLOv2Loss(ANCHORS)(out, t), YOLOv2Loss(ANCHORS)(out.bfloat16(), t)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item(), rel=0.05)


def tiny_detector(num_classes):
    return init_model(yolo_resnet(num_classes, 1 / 16, layers=(1, 1, 3, 1)), seed=0)


def test_training_the_tiny_model_learns_to_detect(voc_tree):
    """Plain SGD on 24 generated images (64 px, a 2 x 2 grid), half of section 3 skipped as a ResIST
    sub-network trains: the loss falls and mAP on those images rises well above the untrained model's."""
    torch.manual_seed(0)
    classes = list(make_voc_like.CLASSES)
    ds = VOCDetection(voc_tree, TRAIN_SPLITS, size=64, classes=classes)
    x, t = collate([ds[i] for i in range(len(ds))])
    model = tiny_detector(len(classes))
    loss_fn = YOLOv2Loss(model.anchors)

    def score():
        model.eval()
        ev = DetectionEvaluator(loss_fn, len(classes))
        with torch.no_grad():
            ev.update(model(x), t)
        return ev.compute()

    before = score()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.skip = frozenset(model.partitionable[::2])
    model.train()
    first = None
    for _ in range(50):
        loss, parts = loss_fn(model(x), t, parts=True)
        first = first or parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.skip = frozenset()
    after = score()
    assert parts["coord"] < 0.3 * first["coord"] and parts["class"] < 0.3 * first["class"]
    assert after["test_loss"] < 0.3 * before["test_loss"]
    assert after["map50"] > 30 and after["map50"] > before["map50"] + 25
