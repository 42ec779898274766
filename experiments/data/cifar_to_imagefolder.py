"""CIFAR-10 as a class-per-folder JPEG tree, so that the image-folder path (paper §5's ImageNet
pipeline) can be measured on real data here: ``OUT/train/<class>/NNNNN.jpg`` (50,000 images) and
``OUT/val/<class>/NNNNN.jpg`` (the 10,000 test images), upscaled from 32 pixels to ``--size`` with
bicubic resampling and saved as JPEG at ``--quality``. NNNNN is the image's row in the official order.

The class folders are CIFAR-10's names, which sort in label order (airplane = 0 ... truck = 9), so the
folder path's class indices are the in-memory path's labels. The tree is written beside OUT and
renamed into place at the end: an interrupted run leaves no half-written OUT.

    python bench/cifar_to_imagefolder.py --src ../shared/data/cifar10 --out data/cifar10_jpeg64 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def load_cifar(src: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The numpy layout of CIFAR-10 (``train_x_00.npy`` ... ``test_y.npy``, HWC uint8)."""
    try:
        train_x = np.concatenate([np.load(src / f"train_x_{k:02d}.npy") for k in range(5)])
        return {"train": (train_x, np.load(src / "train_y.npy")),
                "val": (np.load(src / "test_x.npy"), np.load(src / "test_y.npy"))}
    except (OSError, ValueError) as e:
        raise SystemExit(f"cifar_to_imagefolder: cannot read CIFAR-10's numpy layout in {src} ({e})") from None


def write_tree(splits: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, size: int, quality: int,
               limit: int | None = None) -> dict[str, int]:
    """Write the tree into ``out`` (which must not exist yet); returns images written per split."""
    assert list(CLASSES) == sorted(CLASSES), "folder order must be label order"
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = {}
    for split, (x, y) in splits.items():
        n = len(y) if limit is None else min(limit, len(y))
        for name in CLASSES:
            (partial / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.fromarray(x[i])
            if size != img.width:
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            img.save(partial / split / CLASSES[int(y[i])] / f"{i:05d}.jpg", "JPEG", quality=quality)
        counts[split] = n
    (partial / "source.json").write_text(json.dumps(
        {"from": "CIFAR-10 (numpy layout, official order)", "size": size, "quality": quality, "images": counts,
         "classes": list(CLASSES)}, indent=2) + "\n")
    os.replace(partial, out)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=os.environ.get("RESIST_DATA_DIR", "data"), help="CIFAR-10's numpy layout")
    ap.add_argument("--out", required=True, help="the tree to write (must not exist)")
    ap.add_argument("--size", type=int, default=64, help="side of the written images in pixels (default 64)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    ap.add_argument("--limit", type=int, default=None, help="write only the first N images of each split")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"cifar_to_imagefolder: {out} exists; remove it or choose another --out")
    if args.size < 8 or not 1 <= args.quality <= 100:
        raise SystemExit("cifar_to_imagefolder: --size must be >= 8 and --quality in 1..100")
    t0 = time.perf_counter()
    counts = write_tree(load_cifar(Path(args.src)), out, args.size, args.quality, args.limit)
    print(f"wrote {counts['train']:,} training and {counts['val']:,} validation images of {args.size} px to {out} "
          f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
