"""The standard ImageNet transforms (He et al. 2016, as the paper's §5 adopts them), on Pillow images,
written from their definitions rather than taken from torchvision (which this package does not need).

Training: a random-resized crop (a box of 8%-100% of the image's area with an aspect ratio in 3/4-4/3,
resized to ``size`` x ``size``) and a horizontal flip with probability 1/2. Evaluation: the shorter
side resized to 256/224 of ``size``, then the central ``size`` x ``size`` crop. Both resample
bilinearly, as torchvision's PIL path does. Randomness comes from a :class:`random.Random` the caller
seeds, so that an image's augmentation is a pure function of (seed, rank, step, position in the batch)
whichever loader process decodes it.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import torch
from PIL import Image

#: Per-channel mean and standard deviation of ImageNet's training images, in [0, 1] (the usual constants).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
#: Evaluation resizes the shorter side to this multiple of the crop (256 for a 224 crop).
EVAL_RESIZE = 256 / 224


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale: tuple[float, float] = SCALE,
                            ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop box: area a uniform fraction in ``scale`` of the image's,
    log aspect ratio (w / h) uniform in log ``ratio``; up to 10 draws until the box fits, else the
    largest central box whose ratio is within ``ratio`` (Szegedy et al. 2015; torchvision's rule)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    actual = width / height
    if actual < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif actual > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Random-resized crop to ``size`` x ``size``, then a horizontal flip with probability 1/2."""
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    # Crop, then resize: resizing with ``box=`` would let the filter read pixels beyond the box's edges.
    out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_size(crop: int) -> int:
    """The shorter side before the evaluation center crop: 256 for a 224 crop."""
    return int(round(crop * EVAL_RESIZE))


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio (the longer side is
    truncated to an integer, as torchvision's Resize(int) does)."""
    w, h = img.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    return img if new == (w, h) else img.resize(new, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` box (offsets rounded half to even, as torchvision's CenterCrop)."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_transform(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to 256/224 of ``size``, then the central ``size`` x ``size`` crop."""
    return center_crop(resize_shorter(img, eval_size(size)), size)


#: The Pillow formats a dataset's image may be in (those of ``folder.IMAGE_EXTENSIONS``; MPO is how Pillow
#: opens some cameras' JPEGs). Any other plugin is never tried, whatever a file's bytes say it is: a file
#: named .jpg that holds PostScript must not reach the EPS plugin, which runs Ghostscript on it.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "PPM", "BMP", "TIFF", "WEBP")


@functools.lru_cache(maxsize=None)
def image_formats() -> tuple[str, ...]:
    """:data:`IMAGE_FORMATS` that this Pillow build can open (``Image.open`` fails on an unregistered one)."""
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def open_image(path: str) -> Image.Image:
    """``Image.open`` restricted to :data:`IMAGE_FORMATS` (lazy: pixels are read at ``load()``)."""
    return Image.open(path, formats=image_formats())


def decode(path: str) -> Image.Image:
    """The image at ``path`` as RGB, fully decoded (so that a truncated file fails here, not later)."""
    img = open_image(path)
    try:
        img.load()  # decodes, and closes the file of a single-frame image
    except BaseException:
        img.close()  # a skipped bad image must not leave its file open
        raise
    return img if img.mode == "RGB" else img.convert("RGB")


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """An RGB image as a (3, H, W) uint8 tensor; normalization happens on the batch, on the device."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
