"""Class-per-folder image datasets streamed from disk (ImageNet as the paper's §5 trains on it).

``DIR/train/<class>/<image>`` and ``DIR/val/<class>/<image>``: an ImageNet tree in that layout works as
it is. Class index = position of the folder name in the sorted training classes; validation folders
are matched to them by name. Extra test sets (ImageNet-V2's MatchedFrequency, Threshold0.7 and
TopImages, Recht et al. 2019) are class-per-folder trees whose folders are training class names or
class indices ("0".."999", the layout ImageNet-V2 ships in).

Only the file list is held in memory, as flat numpy arrays; images are decoded with Pillow and augmented
in DataLoader worker processes, batch by batch. Each epoch, worker ``rank`` reads its disjoint shard
of a permutation that is a pure function of (seed, epoch) -- the same shards as the in-memory datasets
-- and the augmentation of an image is a pure function of (seed, rank, step, position in the batch), so
a run is reproducible and resumable whichever loader process decodes which image.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as _TorchDataset

from ..seeds import mix
from .augment import normalize
from .base import DatasetError
from .sharding import batch_positions, epoch_permutation, steps_per_epoch
from .transforms import IMAGENET_MEAN, IMAGENET_STD, decode, eval_transform, to_uint8_chw, train_transform

log = logging.getLogger("resist")

#: What counts as an image (the extensions torchvision's ImageFolder accepts); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_AUGMENT_SALT = 0xF01D  # keeps augmentation seeds apart from the data-order seeds


class FileTable:
    """Image files under ``root`` with their class labels.

    The relative paths live in one byte array with offsets, not in a Python list: a forked loader
    process then shares them with its parent, whereas the reference counts of a million ``str``
    objects would copy the pages they sit on into every process."""

    def __init__(self, root: str | Path, relpaths: Sequence[str], labels: Sequence[int]) -> None:
        if len(relpaths) != len(labels):
            raise ValueError(f"{len(relpaths)} files but {len(labels)} labels")
        # A name that is not UTF-8 reaches Python with its bytes escaped as surrogates; fsencode gives
        # those bytes back (and fsdecode the same str), so such a file is read like any other.
        encoded = [os.fsencode(p) for p in relpaths]
        self.root = str(root)
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes()))


# ------------------------------------------------------------------------------------------- scanning

def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_folders(folder: Path) -> list[str]:
    """Names of the class folders in ``folder``, sorted (hidden folders and loose files are ignored)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))


def images_in(folder: Path) -> list[str]:
    """Paths (relative to ``folder``) of the image files anywhere under it, sorted, so that the file
    order and hence the data order do not depend on the file system."""
    found = []
    # Linked folders are followed (trees are often assembled from links), but a link back to a folder
    # the walk is inside would be walked again and again, each time filing its images under this class.
    inside = {str(folder): [os.path.realpath(folder)]}
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for d in dirs:
            real = os.path.realpath(os.path.join(here, d))
            if real in inside[here]:
                raise DatasetError(f"{os.path.join(here, d)} links to {real}, a folder it lies in: following it "
                                   f"would read the same images again and again; remove the link")
            inside[os.path.join(here, d)] = inside[here] + [real]
        rel = os.path.relpath(here, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files
                  if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def scan(folder: Path) -> dict[str, list[str]]:
    """Class folder name -> its images (paths relative to ``folder``); an error names an empty class."""
    classes = class_folders(folder)
    if not classes:
        raise DatasetError(f"{folder} has no class folders: expected {folder}/<class>/<image>")
    tree = {}
    for name in classes:
        files = images_in(folder / name)
        if not files:
            raise DatasetError(f"class folder {folder / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        tree[name] = [os.path.join(name, f) for f in files]
    return tree


def _table(folder: Path, tree: dict[str, list[str]], label_of: dict[str, int]) -> FileTable:
    paths = [p for name in tree for p in tree[name]]
    return FileTable(folder, paths, [label_of[name] for name in tree for _ in tree[name]])


def _listing(names: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" (and {len(names) - most} more)" if len(names) > most else "")


def extra_label_map(folders: Sequence[str], classes: Sequence[str], name: str, where: Path) -> dict[str, int]:
    """How an extra test set's folders map to class indices: by training class name when every folder
    is one, else by index when every folder is a decimal index below the class count (ImageNet-V2)."""
    index = {c: i for i, c in enumerate(classes)}
    not_names = [f for f in folders if f not in index]
    if not not_names:
        return {f: index[f] for f in folders}
    not_indices = [f for f in folders if not (f.isdecimal() and int(f) < len(classes))]
    if not not_indices:
        return {f: int(f) for f in folders}
    unknown = not_names if len(not_names) <= len(not_indices) else not_indices
    raise DatasetError(f"extra test set {name} ({where}) has folders that are neither training class names "
                       f"nor class indices 0..{len(classes) - 1}: {_listing(unknown)}")


def load_imagefolder(data_dir: str | Path, crop_size: int = 224,
                     extra_test: dict[str, str] | None = None) -> "FolderDataset":
    """Scan ``data_dir``/train, ``data_dir``/val and the extra test sets; decode nothing yet."""
    root = Path(data_dir)
    layout = "DIR/train/<class>/<image> and DIR/val/<class>/<image>"
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; pass --data-dir DIR with {layout}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"{root} has no {split}/ folder; an image-folder dataset is {layout}")
    train = scan(root / "train")
    classes = tuple(train)
    label_of = {c: i for i, c in enumerate(classes)}
    val = scan(root / "val")
    missing = [c for c in val if c not in label_of]
    if missing:
        raise DatasetError(f"{root / 'val'} has classes that {root / 'train'} lacks: {_listing(missing)}")
    extra = {}
    for name, folder in (extra_test or {}).items():
        where = Path(folder)
        if not where.is_dir():
            raise DatasetError(f"extra test set {name}: folder {where} does not exist")
        tree = scan(where)
        extra[name] = _table(where, tree, extra_label_map(list(tree), classes, name, where))
    source = f"image folders in {root} ({len(classes)} classes)"
    return FolderDataset("imagefolder", _table(root / "train", train, label_of), _table(root / "val", val, label_of),
                         classes, crop_size, extra, source)


# ------------------------------------------------------------------------------ decoding and batches

class BadImages:
    """What a rank does with an image that cannot be decoded: stop with the file's name (a
    :class:`DatasetError`), or with ``skip`` leave it out of its batch and remember it for the summary."""

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self.seen: dict[str, dict[int, str]] = {}
        """Per split (train, test, an extra test set): index -> path of the images skipped."""

    def found(self, split: str, table: FileTable, index: int, reason: str) -> None:
        path = table.path(index)
        if not self.skip:
            raise DatasetError(f"{path} is not a readable image ({reason}); replace or remove it, or pass "
                               f"--skip-bad-images to leave such files out")
        mine = self.seen.setdefault(split, {})
        if index not in mine:
            mine[index] = path
            log.warning("skipping %s: not a readable image (%s)", path, reason)


class _Decoder(_TorchDataset):
    """Decodes and transforms one image, given ``(index, augmentation seed)``; runs in a loader process."""

    def __init__(self, table: FileTable, size: int, augment: bool) -> None:
        self.table, self.size, self.augment = table, size, augment

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[int, int, Tensor | None, str | None]:
        index, seed = key
        try:
            img = decode(self.table.path(index))
            img = train_transform(img, self.size, random.Random(seed)) if self.augment else eval_transform(img, self.size)
        except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
            return index, int(self.table.labels[index]), None, " ".join(f"{type(e).__name__}: {e}".split())
        return index, int(self.table.labels[index]), to_uint8_chw(img), None


def _collate(items: list) -> tuple[Tensor | None, Tensor, list[tuple[int, str]]]:
    """Stack the images that decoded; report the others back to the training process instead of
    raising in the loader, whose re-raised exception would carry its traceback in the message."""
    good = [(y, x) for _, y, x, err in items if err is None]
    bad = [(i, err) for i, _, _, err in items if err is not None]
    x = torch.stack([x for _, x in good]) if good else None  # (B, 3, S, S) uint8
    return x, torch.tensor([y for y, _ in good], dtype=torch.int64), bad


class _TrainKeys:
    """The batches of worker ``rank`` from step ``start`` on, as ``(index, augmentation seed)`` lists:
    its shard of each epoch's permutation (exactly :func:`~resist.data.sharding.batch_indices`'s,
    the permutation drawn once per epoch instead of once per step)."""

    def __init__(self, n: int, world_size: int, rank: int, batch_size: int, seed: int, augment: bool) -> None:
        self.n, self.world_size, self.rank, self.batch_size = n, world_size, rank, batch_size
        self.seed, self.augment = seed, augment
        self.steps_per_epoch = steps_per_epoch(n, world_size, batch_size)
        self.start = 0

    def keys(self, step: int, perm: Tensor) -> list[tuple[int, int | None]]:
        _, positions = batch_positions(self.n, self.world_size, self.rank, step, self.batch_size)
        idx = perm[positions].tolist()
        return [(i, mix(_AUGMENT_SALT, self.seed, self.rank, step, j) if self.augment else None)
                for j, i in enumerate(idx)]

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        step, epoch, perm = self.start, None, None
        while True:  # the loader stops asking when training ends
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                perm = epoch_permutation(self.n, self.seed, epoch)
            yield self.keys(step, perm)
            step += 1


def _loader(decoder: _Decoder, batches, workers: int, device: torch.device, persistent: bool) -> DataLoader:
    return DataLoader(decoder, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0)


def _to_device(x: Tensor, y: Tensor, mean, std, device: torch.device) -> tuple[Tensor, Tensor]:
    # uint8 crosses to the device (a quarter of float32's bytes), pinned, and is normalized there.
    return normalize(x.to(device, non_blocking=True), mean, std), y.to(device, non_blocking=True)


class FolderStream:
    """Worker ``rank``'s training batches of an image folder: ``.batch(step)`` -> (x (B, 3, S, S)
    float32 normalized, y (B,) int64), on ``device``. Loader processes decode ahead; asking for a step
    other than the next one restarts them at that step."""

    def __init__(self, table: FileTable, size: int, mean, std, world_size: int, rank: int, batch_size: int,
                 seed: int, augment: bool, device: torch.device, loader_workers: int, bad: BadImages) -> None:
        self.table, self.mean, self.std, self.device, self.bad = table, mean, std, device, bad
        self.rank = rank
        self.order = _TrainKeys(len(table), world_size, rank, batch_size, seed, augment)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.loader = _loader(_Decoder(table, size, augment), self.order, loader_workers, device, persistent=True)
        self._batches: Iterator | None = None
        self._next = -1

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        if step != self._next:
            self.order.start = step
            self._batches = iter(self.loader)
        self._next = step + 1
        x, y, bad = next(self._batches)
        for i, reason in bad:
            self.bad.found("train", self.table, i, reason)
        if x is None:
            raise DatasetError(f"no image of worker {self.rank}'s batch at step {step} could be read "
                               f"(first: {self.table.path(bad[0][0])}); check the data folder")
        return _to_device(x, y, self.mean, self.std, self.device)

    def close(self) -> None:
        """Stop the loader processes (they also stop when the stream is garbage collected)."""
        self._batches = None
        self.loader = None


def evenly_spaced(n: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (all of them without a limit): a folder's files
    are in class order, so its first ``limit`` would be a few classes only."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def _eval_batches(split: str, table: FileTable, size: int, mean, std, batch_size: int, limit: int | None,
                  device: torch.device, loader_workers: int, bad: BadImages) -> Iterator[tuple[Tensor, Tensor]]:
    idx = evenly_spaced(len(table), limit)
    batches = [[(i, None) for i in idx[k:k + batch_size]] for k in range(0, len(idx), batch_size)]
    for x, y, skipped in _loader(_Decoder(table, size, False), batches, loader_workers, device, persistent=False):
        for i, reason in skipped:
            bad.found(split, table, i, reason)
        if x is not None:
            yield _to_device(x, y, mean, std, device)


@dataclass
class FolderDataset:
    """A class-per-folder dataset: file lists of the training and validation (test) images, the
    classes in index order, and any extra test sets; the trainer reads batches through
    :meth:`train_stream` and :meth:`eval_sets`, as for the in-memory datasets."""

    name: str
    train: FileTable
    test: FileTable
    classes: tuple[str, ...]
    crop_size: int
    extra: dict[str, FileTable] = field(default_factory=dict)
    source: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        return len(self.train)

    def train_stream(self, world_size: int, rank: int, batch_size: int, seed: int, augment: bool = True, *,
                     device: torch.device | str = "cpu", loader_workers: int = 0,
                     bad: BadImages | None = None) -> FolderStream:
        """Worker ``rank``'s training batches: random-resized crops and flips, or (``augment=False``)
        the evaluation transform of the training images."""
        return FolderStream(self.train, self.crop_size, self.mean, self.std, world_size, rank, batch_size, seed,
                            augment, torch.device(device), loader_workers, bad or BadImages())

    def eval_sets(self, batch_size: int, limit: int | None = None, *, device: torch.device | str = "cpu",
                  loader_workers: int = 0, bad: BadImages | None = None) -> dict[str, Callable[[], Iterator]]:
        """Per test set ("test" = val/, then the extra ones): a function that yields its batches in
        order, with the evaluation transform; ``limit`` images of each, evenly spaced."""
        bad = bad or BadImages()
        return {split: functools.partial(_eval_batches, split, table, self.crop_size, self.mean, self.std, batch_size,
                                         limit, torch.device(device), loader_workers, bad)
                for split, table in {"test": self.test, **self.extra}.items()}
