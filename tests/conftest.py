"""Fixtures shared by every test folder: small class-per-folder trees of real JPEG files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from resist.data import load_dataset

CLASSES = ("ant", "bee", "cat", "dog")


def write_image_tree(root: Path, per_class: tuple[int, int] = (16, 4), size: int = 24, classes=CLASSES,
                     seed: int = 0, fmt: str = "JPEG") -> Path:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``: the synthetic dataset's blocky class
    templates plus noise (learnable, and surviving crops and flips), upscaled to ``size`` pixels."""
    n_train, n_val = per_class
    k = len(classes)
    data = load_dataset("synthetic", n_train=n_train * k, n_test=n_val * k, num_classes=k, size=8, seed=seed)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for split, arrays in (("train", data.train), ("val", data.test)):
        counts = dict.fromkeys(range(k), 0)
        for x, y in zip(arrays.x, arrays.y.tolist()):
            folder = root / split / classes[y]
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(x.numpy()).resize((size, size), Image.Resampling.BICUBIC)
            img.save(folder / f"{counts[y]:04d}.{ext}", fmt, **({"quality": 95} if fmt == "JPEG" else {}))
            counts[y] += 1
    return root


def index_layout(src: Path, dst: Path, classes=CLASSES) -> Path:
    """A copy of the class folders of ``src`` renamed to class indices ("0", "1", ...), as ImageNet-V2 ships."""
    for i, name in enumerate(classes):
        (dst / str(i)).mkdir(parents=True)
        for f in sorted((src / name).iterdir()):
            (dst / str(i) / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture
def image_tree(tmp_path):
    """A 4-class tree of 24-pixel JPEGs: 16 training and 4 validation images per class."""
    return write_image_tree(tmp_path / "images")


@pytest.fixture
def tree_writer():
    """:func:`write_image_tree` and :func:`index_layout`, for tests that need other trees."""
    return write_image_tree, index_layout


@pytest.fixture
def one_thread():
    # Spawned workers compute with one thread each; the in-process run must too for equal bits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def postscript_spy(monkeypatch):
    """The files handed to Pillow's EPS plugin (which would run Ghostscript on them), which is made to
    decline each (Pillow then tries its next format)."""
    from PIL import EpsImagePlugin

    reached = []

    def spy(self):
        reached.append(self.filename)
        raise SyntaxError("declined by the test")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    return reached
