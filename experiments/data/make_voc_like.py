"""Write a generated data set in Pascal VOC's layout (Everingham et al. 2010; the devkit's folders):

    OUT/VOCdevkit/VOC2007/{Annotations/<id>.xml, ImageSets/Main/{trainval,test}.txt, JPEGImages/<id>.jpg}
    OUT/VOCdevkit/VOC2012/{Annotations, ImageSets/Main/trainval.txt, JPEGImages}

Each image is a JPEG of random size with 1-4 objects of a few VOC classes drawn over a background, each
class a shape of its own in a jittered colour of its own (person: tall ellipse, car: wide rectangle,
dog: triangle, bottle: tall diamond, tvmonitor: hollow square). Objects smaller than 10% of the image
side are marked ``difficult`` as VOC marks hard ones. The background is smooth coloured noise, or with
``--background cifar`` an upscaled CIFAR-10 training image (from the numpy layout of --cifar-dir).
Everything is a pure function of ``--seed``: image k of a split draws from its own generator.

It serves the tests (which import :func:`make_voc_like`) and the CPU-scale detection result:

    python bench/make_voc_like.py /tmp/voc_like --train-2007 1000 --test-2007 1000 --train-2012 2000
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: class -> (shape, base RGB colour); the names are VOC's.
CLASSES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "person": ("ellipse", (220, 40, 40)),
    "car": ("rectangle", (40, 70, 220)),
    "dog": ("triangle", (40, 190, 60)),
    "bottle": ("diamond", (230, 210, 40)),
    "tvmonitor": ("frame", (200, 50, 200)),
}
#: shape -> range of height / width.
ASPECT = {"ellipse": (1.6, 2.6), "rectangle": (0.4, 0.6), "triangle": (0.8, 1.2), "diamond": (1.8, 2.8),
          "frame": (0.8, 1.2)}
#: (year, split) -> the id of image k (VOC 2007 ids are 6 digits; 2012's carry a year prefix).
ID_FORMAT = {"2007": "{:06d}", "2012": "2012_{:06d}"}
SPLIT_CODE = {("2007", "trainval"): 0, ("2007", "test"): 1, ("2012", "trainval"): 2}


def _background(rng: np.random.Generator, w: int, h: int, cifar: np.ndarray | None) -> Image.Image:
    if cifar is not None:
        return Image.fromarray(cifar[rng.integers(len(cifar))]).resize((w, h), Image.BILINEAR)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth colour fields, then pixel noise
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    noisy = base + rng.integers(-40, 41, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if shape == "ellipse":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=colour)
    else:  # frame: a hollow square whose border is a fifth of its side
        draw.rectangle(box, outline=colour, width=max(1, min(x1 - x0, y1 - y0) // 5))


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def make_image(rng: np.random.Generator, classes: list[str], size_range: tuple[int, int],
               cifar: np.ndarray | None) -> tuple[Image.Image, list[dict]]:
    """One image and its objects (``name``, ``box`` as 0-based inclusive pixels, ``difficult``)."""
    w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    img = _background(rng, w, h, cifar)
    draw = ImageDraw.Draw(img)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, 5))):
        name = classes[int(rng.integers(len(classes)))]
        shape, base = CLASSES[name]
        for _attempt in range(20):  # find a place overlapping the objects so far by IoU <= 0.3
            side = rng.uniform(0.06, 0.6) * min(w, h)
            aspect = rng.uniform(*ASPECT[shape])
            bw, bh = side / np.sqrt(aspect), side * np.sqrt(aspect)
            scale = min(1.0, (w - 2) / bw, (h - 2) / bh)
            bw, bh = max(3, int(bw * scale)), max(3, int(bh * scale))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x0, y0, x0 + bw - 1, y0 + bh - 1)
            if all(_iou(box, o["box"]) <= 0.3 for o in objects):
                break
        else:
            continue
        colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in base)
        _draw(draw, shape, box, colour)
        objects.append({"name": name, "box": box, "difficult": min(bw, bh) < 0.1 * min(w, h)})
    return img, objects


def annotation_xml(year: str, image_id: str, width: int, height: int, objects: list[dict]) -> bytes:
    """The VOC annotation of one image (bndbox in 1-based inclusive pixels, as the devkit's)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "make_voc_like (generated)"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o["name"]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if o["difficult"] else "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), o["box"]):
            ET.SubElement(bb, tag).text = str(v + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def make_voc_like(out: str | Path, counts: dict[tuple[str, str], int], seed: int = 0,
                  size_range: tuple[int, int] = (96, 160), classes: list[str] | None = None,
                  cifar_dir: str | Path | None = None) -> Path:
    """Write ``counts[(year, split)]`` images per split under ``out/VOCdevkit``; returns that folder."""
    classes = list(CLASSES) if classes is None else list(classes)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"classes must be some of {', '.join(CLASSES)}, got {classes}")
    if set(counts) - set(SPLIT_CODE):
        raise ValueError(f"splits must be some of {sorted(SPLIT_CODE)}, got {sorted(counts)}")
    if not 8 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size_range must be 8 <= min <= max, got {size_range}")
    cifar = np.load(Path(cifar_dir) / "train_x_00.npy", mmap_mode="r") if cifar_dir else None
    devkit = Path(out) / "VOCdevkit"
    for (year, split), n in counts.items():
        base = devkit / f"VOC{year}"
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        # Ids never collide across the splits of a year: each split has its own range.
        ids = [ID_FORMAT[year].format(SPLIT_CODE[year, split] * 100_000 + k) for k in range(n)]
        for k, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, SPLIT_CODE[year, split], k])
            img, objects = make_image(rng, classes, size_range, cifar)
            img.save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
            (base / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(year, image_id, *img.size, objects))
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return devkit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write VOCdevkit/ into")
    p.add_argument("--train-2007", type=int, default=1000, help="VOC2007 trainval images")
    p.add_argument("--test-2007", type=int, default=1000, help="VOC2007 test images")
    p.add_argument("--train-2012", type=int, default=2000, help="VOC2012 trainval images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=96, help="smallest image side in pixels")
    p.add_argument("--max-size", type=int, default=160, help="largest image side in pixels")
    p.add_argument("--classes", default=",".join(CLASSES), help="comma-separated subset of the drawn classes")
    p.add_argument("--background", choices=("noise", "cifar"), default="noise")
    p.add_argument("--cifar-dir", default="/work/shared/data/cifar10", help="CIFAR-10 numpy layout (for cifar)")
    a = p.parse_args(argv)
    counts = {("2007", "trainval"): a.train_2007, ("2007", "test"): a.test_2007, ("2012", "trainval"): a.train_2012}
    try:
        devkit = make_voc_like(a.out, {k: n for k, n in counts.items() if n > 0}, a.seed, (a.min_size, a.max_size),
                               a.classes.split(","), a.cifar_dir if a.background == "cifar" else None)
    except (ValueError, OSError) as e:
        print(f"make_voc_like: {e}", file=sys.stderr)
        return 2
    print(f"wrote {sum(counts.values())} images to {devkit} (classes {a.classes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
