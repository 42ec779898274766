"""Train a YOLOv2-style detector in one process on a VOC-format folder and report the test loss and mAP
after every epoch: the one-worker reference for the distributed detection runs, and a check that a
data set (e.g. from make_voc_like.py) is learnable.

The schedule has the paper's shape (§5): the learning rate rises linearly over the first 30% of the
epochs and is divided by 10 at 60% and 90%; SGD with momentum 0.9 and weight decay 5e-4.

    python bench/detection_single_process.py /tmp/voc_like --epochs 6 --size 128 --width 0.0625
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir")
    p.add_argument("--model", default="yolo_resnet101")
    p.add_argument("--width", type=float, default=1 / 16)
    p.add_argument("--size", type=int, default=128, help="input side in pixels")
    p.add_argument("--classes", default="person,car,dog,bottle,tvmonitor",
                   help="class list of the data (default: make_voc_like's)")
    p.add_argument("--train", default="+".join(f"{y}-{s}" for y, s in TRAIN_SPLITS))
    p.add_argument("--test", default="+".join(f"{y}-{s}" for y, s in TEST_SPLITS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--out", help="write the per-epoch results here as JSON")
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
