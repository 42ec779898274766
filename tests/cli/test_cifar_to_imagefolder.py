"""experiments/data/cifar_to_imagefolder.py as a user runs it: CIFAR-10's numpy layout in, a JPEG class-folder tree
out that the image-folder dataset reads with the same labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from resist.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]


def fake_cifar(folder: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    a = {"train_y": rng.permutation(np.arange(25) % 10).astype(np.uint8), "test_y": np.arange(10, dtype=np.uint8)}
    train_x = rng.integers(0, 256, (25, 32, 32, 3), dtype=np.uint8)
    for k in range(5):
        np.save(folder / f"train_x_{k:02d}.npy", train_x[5 * k:5 * k + 5])
    np.save(folder / "train_y.npy", a["train_y"])
    np.save(folder / "test_x.npy", rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "test_y.npy", a["test_y"])
    return a


def convert(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "data" / "cifar_to_imagefolder.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def test_writes_a_tree_the_folder_dataset_reads_with_cifars_labels(tmp_path):
    labels = fake_cifar(tmp_path / "cifar")
    out = tmp_path / "tree"
    proc = convert("--src", tmp_path / "cifar", "--out", out, "--size", 40)
    assert proc.returncode == 0, proc.stderr
    ds = load_dataset("imagefolder", out, crop_size=32)
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck" and ds.n_train == 25 and len(ds.test) == 10
    rows = {int(Path(ds.train.path(i)).stem): int(ds.train.labels[i]) for i in range(ds.n_train)}
    assert [rows[i] for i in range(25)] == labels["train_y"].tolist()  # file NNNNN.jpg is row NNNNN
    assert Image.open(ds.test.path(3)).size == (40, 40)
    assert json.loads((out / "source.json").read_text())["images"] == {"train": 25, "val": 10}
    assert not (tmp_path / "tree.partial").exists()
    again = convert("--src", tmp_path / "cifar", "--out", out)
    assert again.returncode != 0 and "exists" in again.stderr
