"""The detector goes through the ResIST machinery unchanged: two simulated workers train sub-networks of
a tiny detector with the YOLOv2 loss on their VOC shards; the shared head ends each round averaged and
equal on both, each worker holds only its blocks, and the assembled global model evaluates."""

import torch

from resist.algorithms.parts import assemble
from resist.comm import run_in_process
from resist.config import AlgoConfig
from resist.registry import algorithm_class
from resist.tasks.detection.evaluate import evaluate
from resist.tasks.detection.loss import YOLOv2Loss
from resist.models.yolo import create_detection_model
from resist.data.voc import TEST_SPLITS, TRAIN_SPLITS, DetectionBatchStream, VOCDetection, eval_batches

from conftest import make_voc_like

CLASSES = list(make_voc_like.CLASSES)


def build():
    with torch.device("meta"):
        return create_detection_model("yolo_resnet", len(CLASSES), 1 / 16, layers=(1, 1, 5, 1))


def test_two_worker_resist_trains_and_assembles_a_detector(voc_tree):
    train = VOCDetection(voc_tree, TRAIN_SPLITS, size=64, classes=CLASSES)
    test = VOCDetection(voc_tree, TEST_SPLITS, size=64, classes=CLASSES)
    cfg = AlgoConfig(name="resist", workers=2, local_iters=2)
    rounds = 3

    def worker(comm):
        algo = algorithm_class("resist")(comm, build, torch.device("cpu"), cfg, seed=0)
        algo.start(0)
        store = algo.store
        loss_fn = YOLOv2Loss(store.model.anchors)
        stream = DetectionBatchStream(train, 2, comm.rank, 4, seed=0, total_steps=rounds * 2, num_workers=0)
        heads, held, losses = [], [], []
        for r in range(rounds):
            algo.begin_round(r)
            assert store.model.skip == frozenset(b for b in store.candidates if comm.rank not in algo.holders(r)[b])
            opt = torch.optim.SGD([p for _, p in store.trainable()], lr=0.005, momentum=0.9)
            for step in range(r * 2, r * 2 + 2):
                x, t = stream.batch(step)
                store.model.train()
                loss = loss_fn(store.model(x), t)
                opt.zero_grad()
                loss.backward()
                algo.after_backward()
                opt.step()
                losses.append(loss.item())
            algo.end_round(r, final=r == rounds - 1)
            heads.append(torch.cat([p.detach().flatten() for p in store.model.head.parameters()]).clone())
            held.append({b for b in store.candidates if store.held(b)})
        model = assemble(comm, store, algo.holders_now(), algo.eval_scale())
        result = evaluate(model, eval_batches(test, 4, 0), loss_fn) if model is not None else None
        return heads, held, losses, result, {b: algo.holders_now()[b] for b in store.candidates}

    (h0, held0, l0, result, holders), (h1, held1, l1, none, _) = run_in_process(2, worker)
    for a, b in zip(h0, h1):
        assert torch.equal(a, b)  # the shared head is averaged into the same bits on both workers
    assert not torch.equal(h0[0], h0[-1])  # and it trained
    # Without a minimum depth the 4 partitionable blocks are dealt out: each worker holds its own two.
    for mine, theirs in zip(held0, held1):
        assert len(mine) == len(theirs) == 2 and not mine & theirs
    assert set(holders) == held0[-1] | held1[-1]
    assert all(torch.isfinite(torch.tensor(l0 + l1)))
    assert none is None and result["test_loss"] > 0 and torch.isfinite(torch.tensor(result["test_loss"]))
