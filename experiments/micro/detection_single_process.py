"""Train a YOLOv2-style detector in one process on a VOC-format folder and report the test loss and mAP
after every epoch: the one-worker reference for the distributed detection runs, and a check that a
data set (e.g. from make_voc_like.py) is learnable.

The schedule has the paper's shape (§5): the learning rate rises linearly over the first 30% of the
epochs and is divided by 10 at 60% and 90%; SGD with momentum 0.9 and weight decay 5e-4.

    python experiments/micro/detection_single_process.py /tmp/voc_like --epochs 6 --size 128 --width 0.0625
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import parser  # noqa: E402
from resist.algorithms.parts import init_model  # noqa: E402
from resist.data.sharding import steps_per_epoch  # noqa: E402
from resist.tasks.detection import (TEST_SPLITS, TRAIN_SPLITS, DetectionBatchStream,  # noqa: E402
                                    VOCDetection, YOLOv2Loss, create_detection_model, eval_batches, evaluate,
                                    parse_splits)


def lr_at(step: int, total: int, peak: float) -> float:
    t = step / total
    if t < 0.3:
        return peak * (0.1 + 0.9 * t / 0.3)  # warm-up from a tenth of the peak
    return peak * (0.1 if t >= 0.6 else 1.0) * (0.1 if t >= 0.9 else 1.0)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, model="yolo_resnet101", width=1 / 16, size=(128, "input side in pixels"),
               classes=("person,car,dog,bottle,tvmonitor", "class list of the data (default: make_voc_like's)"),
               train="+".join(f"{y}-{s}" for y, s in TRAIN_SPLITS), test="+".join(f"{y}-{s}" for y, s in TEST_SPLITS),
               epochs=6, batch_size=10, lr=0.01, seed=0, threads=1, loader_workers=1,
               out=(None, "write the per-epoch results here as JSON"))
    p.add_argument("data_dir")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    classes = a.classes.split(",")
    train = VOCDetection(a.data_dir, parse_splits(a.train), a.size, classes)
    test = VOCDetection(a.data_dir, parse_splits(a.test), a.size, classes)
    model = init_model(create_detection_model(a.model, len(classes), a.width), a.seed)
    loss_fn = YOLOv2Loss(model.anchors)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    total = steps_per_epoch(len(train), 1, a.batch_size) * a.epochs
    stream = DetectionBatchStream(train, 1, 0, a.batch_size, a.seed, total, num_workers=a.loader_workers)
    header = {"model": a.model, "width": a.width, "size": a.size, "train_images": len(train),
              "test_images": len(test), "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
              "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "threads": a.threads}
    print(json.dumps(header), flush=True)
    rows, start, eval_s = [], time.perf_counter(), 0.0
    for step in range(total):
        x, t = stream.batch(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, a.lr)
        model.train()
        loss = loss_fn(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % stream.steps_per_epoch == 0:
            t0 = time.perf_counter()
            train_s = t0 - start - eval_s
            r = evaluate(model, eval_batches(test, 50, a.loader_workers), loss_fn)
            eval_s += time.perf_counter() - t0
            rows.append({"epoch": (step + 1) // stream.steps_per_epoch, "train_loss": round(loss.item(), 4),
                         "test_loss": round(r["test_loss"], 4), "map50_voc07": round(r["map50_voc07"], 2),
                         "map50": round(r["map50"], 2), "train_s": round(train_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"config": header, "epochs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
