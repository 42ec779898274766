"""Image-classification datasets as uint8 HWC tensors in memory, and the loader of every dataset.

CIFAR-10/100 load from a numpy layout, the official python batches or the official tarball (optionally
downloaded); ``synthetic`` and ``digits`` need no files and work offline. ``imagefolder`` (class-per-
folder images streamed from disk) lives in ``folder.py``; both kinds offer the trainer the same
:meth:`Dataset.train_stream` and :meth:`Dataset.eval_sets`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..registry import DATASETS, TEXT_DATASETS, did_you_mean
from .base import DatasetError, ImageArrays

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

NUMPY_FILES = tuple(f"train_x_{k:02d}.npy" for k in range(5)) + ("train_y.npy", "test_x.npy", "test_y.npy")


@dataclass
class Dataset:
    """A train/test split with its class count, per-channel mean/std in [0, 1] and provenance."""

    name: str
    train: ImageArrays
    test: ImageArrays
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    #: Class names in index order, where the dataset has them as folders (written to the run folder).
    classes = None

    @property
    def n_train(self) -> int:
        return len(self.train.y)

    def train_stream(self, world_size: int, rank: int, batch_size: int, seed: int, augment: bool = True, *,
                     device=None, loader_workers: int = 0, bad=None):
        """Worker ``rank``'s training batches (a :class:`~resist.data.sharding.BatchStream`, on the CPU;
        ``device``, ``loader_workers`` and ``bad`` concern image folders only)."""
        from .sharding import BatchStream

        return BatchStream(self.train, self.mean, self.std, world_size, rank, batch_size, seed, augment=augment)

    def eval_sets(self, batch_size: int, limit: int | None = None, *, device=None, loader_workers: int = 0,
                  bad=None) -> dict[str, Callable[[], Iterator]]:
        """The test set's batches in order (its first ``limit`` images); the keywords concern image folders."""
        from .sharding import eval_batches

        test = self.test if limit is None else ImageArrays(self.test.x[:limit], self.test.y[:limit])
        return {"test": lambda: eval_batches(test, self.mean, self.std, batch_size)}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False, **kw):
    """Load dataset ``name`` (one of ``DATASETS``).

    CIFAR is looked for in ``data_dir`` (default ``./data``) and, if absent and ``download`` is true, fetched.
    ``synthetic`` takes ``n_train, n_test, num_classes, size, seed``; ``digits`` takes ``seed``;
    ``imagefolder`` (a :class:`~resist.data.folder.FolderDataset`) takes ``crop_size, extra_test``;
    ``pystdlib`` and ``text`` (a :class:`~resist.data.text.TextDataset`) take ``context, max_bytes``;
    ``voc`` (a :class:`~resist.data.voc.VOCDataset`) takes ``size, train_splits, test_splits, flip``.
    """
    allowed = {"cifar10": set(), "cifar100": set(), "digits": {"seed"},
               "synthetic": {"n_train", "n_test", "num_classes", "size", "seed"}, "imagefolder": {"crop_size", "extra_test"},
               "pystdlib": {"context", "max_bytes"}, "text": {"context", "max_bytes"},
               "voc": {"size", "train_splits", "test_splits", "flip"}}
    if name not in allowed:
        raise DatasetError(f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; "
                           f"choose one of {', '.join(DATASETS)}")
    if set(kw) - allowed[name]:
        raise DatasetError(f"dataset {name!r} does not take option(s) {', '.join(sorted(set(kw) - allowed[name]))}")
    if name == "synthetic":
        return _synthetic(**kw)
    if name == "digits":
        return _digits(**kw)
    if name in TEXT_DATASETS:
        from .text import TextDataset, load_text

        context = kw.pop("context", 128)
        return TextDataset(load_text(None if name == "pystdlib" else data_dir or "data", **kw), context)
    if name == "voc":
        from .voc import VOCDataset

        return VOCDataset("data" if data_dir is None else data_dir, **kw)
    if name == "imagefolder":
        from .folder import load_imagefolder

        return load_imagefolder("data" if data_dir is None else data_dir, **kw)
    return _cifar(name, Path("data" if data_dir is None else data_dir), download)


# ----------------------------------------------------------------------------------------------- CIFAR

def _cifar_spec(name: str) -> dict:
    # Read the module constants at call time so tests can monkeypatch them.
    if name == "cifar10":
        return dict(num_classes=10, folder="cifar-10-batches-py", tarball="cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], label_key="labels",
                    url=CIFAR10_URL, md5=CIFAR10_MD5, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    return dict(num_classes=100, folder="cifar-100-python", tarball="cifar-100-python.tar.gz",
                train=["train"], test=["test"], label_key="fine_labels",
                url=CIFAR100_URL, md5=CIFAR100_MD5, mean=CIFAR100_MEAN, std=CIFAR100_STD)


def _cifar(name: str, data_dir: Path, download: bool) -> Dataset:
    spec = _cifar_spec(name)
    other = {"cifar10": "cifar100", "cifar100": "cifar10"}[name]
    # data_dir itself is accepted, unless it is plainly the other CIFAR's folder (both have 50k/10k images).
    dirs = [data_dir / name] + ([data_dir] if data_dir.name != other else [])

    def make(train, test, source):
        return Dataset(name, _cifar_arrays(*train, spec, "train"), _cifar_arrays(*test, spec, "test"),
                       spec["num_classes"], spec["mean"], spec["std"], source)

    for d in dirs:
        if any((d / f).exists() for f in NUMPY_FILES):
            return make(_load_numpy(d, "train"), _load_numpy(d, "test"), f"{name} numpy arrays in {d}")
    for d in dirs:
        if (d / spec["folder"]).is_dir():
            folder = d / spec["folder"]
            return make(_load_batches(folder, spec, "train"), _load_batches(folder, spec, "test"),
                        f"{name} python batches in {folder}")
    tarball = next((d / spec["tarball"] for d in dirs if (d / spec["tarball"]).is_file()), None)
    if tarball is None and download:
        tarball = data_dir / spec["tarball"]
        _download(spec["url"], spec["md5"], tarball)
    if tarball is not None:
        _check_md5(tarball, spec["md5"], remove=False)
        folder = _extract(tarball, spec["folder"])
        return make(_load_batches(folder, spec, "train"), _load_batches(folder, spec, "test"),
                    f"{name} from {tarball}")
    raise DatasetError(
        f"{name} not found in {data_dir}: expected the numpy layout ({', '.join(NUMPY_FILES)}) in it or in "
        f"{data_dir / name}, the folder {spec['folder']}/ or the tarball {spec['tarball']}; "
        f"pass --download to fetch it, or --data-dir to point elsewhere")


def _load_numpy(d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"train_x_{k:02d}.npy" for k in range(5)] if split == "train" else ["test_x.npy"]
    return np.concatenate([_npy(d / f) for f in names]), _npy(d / f"{split}_y.npy")


def _npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # np.load raises many types (ValueError, EOFError, OSError) for bad files
        raise DatasetError(f"{path} is not a valid .npy file ({_msg(e)}); delete it and re-create it") from None


def _load_batches(folder: Path, spec: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in spec[split]:
        path = folder / fname
        batch = _unpickle(path)
        data, labels = _get(batch, "data"), _get(batch, spec["label_key"])
        if data is None or labels is None:
            raise DatasetError(f"{path} is not a CIFAR batch (needs keys data and {spec['label_key']})")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: data must be (N, 3072) uint8, got {data.shape} {data.dtype}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are CHW-flattened
        ys.append(np.asarray(labels))
    return np.concatenate(xs), np.concatenate(ys)


def _get(batch, key: str):
    if not isinstance(batch, dict):
        return None
    return batch.get(key.encode(), batch.get(key))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR batch needs nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 encode bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Forbidden(f"{module}.{name}")
        return super().find_class(module, name)


class _Forbidden(Exception):
    pass


def _unpickle(path: Path):
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except _Forbidden as e:
        raise DatasetError(f"refusing to unpickle {path}: it references {e}, which a CIFAR batch never does "
                           f"(corrupt or malicious file); delete it") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... on truncated or garbled files
        raise DatasetError(f"{path} is truncated or corrupt ({_msg(e)}); delete it and re-extract") from None


def _cifar_arrays(x: np.ndarray, y: np.ndarray, spec: dict, split: str) -> ImageArrays:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DatasetError(f"{split} images must be (N, 32, 32, 3) uint8, got {x.shape} {x.dtype}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{split} labels must be a 1-D integer array, got {y.shape} {y.dtype}")
    if len(x) != len(y):
        raise DatasetError(f"{split}: {len(x)} images but {len(y)} labels")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= spec["num_classes"]):
        raise DatasetError(f"{split} labels must be in [0, {spec['num_classes']}), "
                           f"found {y.min()}..{y.max()}")
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))


def _download(url: str, md5: str, dest: Path) -> None:
    """Fetch ``url`` into a temporary file next to ``dest``, verify its md5, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    shutil.copyfileobj(r, f, 1 << 20)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise DatasetError(f"could not download {url} ({_msg(e)}; no network?); put the CIFAR files in "
                                   f"{dest.parent} or pass --data-dir") from None
        _check_md5(Path(tmp), md5, remove=True, what=url)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_md5(path: Path, md5: str, remove: bool, what: str | None = None) -> None:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != md5:
        if remove:
            path.unlink()
        fix = "it was removed, try again" if remove else "delete it and re-download"
        raise DatasetError(f"md5 of {what or path} is {h.hexdigest()}, expected {md5}; {fix}")


def _extract(tarball: Path, folder: str) -> Path:
    """Extract ``tarball`` next to itself; refuses links, devices and paths escaping the directory."""
    root = tarball.parent.resolve()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        try:
            with tarfile.open(tarball, "r:gz") as tf:
                members = tf.getmembers()
                for m in members:
                    if not (m.isfile() or m.isdir()) or not (tmp / m.name).resolve().is_relative_to(tmp):
                        raise DatasetError(f"{tarball} has an unsafe member {m.name!r}; delete it")
                kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(tmp, members=members, **kw)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(f"{tarball} is not a valid .tar.gz ({_msg(e)}); delete it and re-download") from None
        if not (tmp / folder).is_dir():
            raise DatasetError(f"{tarball} does not contain the folder {folder}/; delete it and re-download")
        # Extract aside, then move in whole, so an interrupted extraction never leaves a partial folder.
        os.replace(tmp / folder, root / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / folder


# ------------------------------------------------------------------------------------ offline datasets

def _synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 4, size: int = 16, seed: int = 0) -> Dataset:
    """Each class is a fixed random blocky template plus per-image Gaussian noise."""
    if min(n_train, n_test) < 0 or num_classes < 2 or size < 4:
        raise DatasetError("synthetic needs n_train, n_test >= 0, num_classes >= 2 and size >= 4")
    g = torch.Generator().manual_seed(seed)
    # Coarse 4x4 blocks so the class survives random crops and flips.
    coarse = torch.rand(num_classes, 4, 4, 3, generator=g)
    cells = -(-size // 4)
    templates = coarse.repeat_interleave(cells, 1).repeat_interleave(cells, 2)[:, :size, :size]

    def split(n):
        y = torch.randperm(n, generator=g) % num_classes
        x = templates[y] + 0.2 * torch.randn(n, size, size, 3, generator=g)
        return ImageArrays((x.clamp(0, 1) * 255).round().to(torch.uint8), y)

    train, test = split(n_train), split(n_test)
    mean, std = _stats(train.x)
    return Dataset("synthetic", train, test, num_classes, mean, std, f"synthetic (seed {seed})")


def _digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, nearest-upsampled to 16x16 RGB uint8, stratified 1437/360 split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    img = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))
    x = img.repeat_interleave(2, 1).repeat_interleave(2, 2)[..., None].expand(-1, -1, -1, 3).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(y)), test_size=360, stratify=d.target, random_state=seed)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    train, test = ImageArrays(x[tr], y[tr]), ImageArrays(x[te], y[te])
    mean, std = _stats(train.x)
    return Dataset("digits", train, test, 10, mean, std, "scikit-learn digits")


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 HWC images."""
    flat = x.reshape(-1, 3).double() / 255
    return tuple(flat.mean(0).tolist()), tuple(flat.std(0).clamp_min(1e-6).tolist())




def _msg(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
