"""Pascal VOC detection data (Everingham et al. 2010, "The Pascal Visual Object Classes (VOC) Challenge").

The folder layout is the VOC devkit's::

    DIR/VOCdevkit/VOC2007/Annotations/<id>.xml
                         /ImageSets/Main/{trainval,test}.txt
                         /JPEGImages/<id>.jpg
    DIR/VOCdevkit/VOC2012/...

Every annotation of the chosen splits is parsed and checked when the dataset is built (a few MB of XML
for the real VOC 2007+2012); images are decoded one at a time in ``__getitem__``, i.e. in the
DataLoader's worker processes, and never held all in memory. A bad file ends in one
:class:`~resist.data.datasets.DatasetError` line that names it.

Coordinates: VOC's ``bndbox`` holds 1-based inclusive pixel indices, so a box covers the continuous
interval ``[xmin - 1, xmax]`` (as py-faster-rcnn's ``pascal_voc.py`` makes them 0-based). Targets hold
boxes as ``(x1, y1, x2, y2)`` fractions of the image in [0, 1], which a resize to any input size leaves
unchanged (the image is stretched to a square as YOLOv2 does, so boxes scale with it).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .base import DatasetError
from .sharding import batch_generator, batch_indices, epoch_permutation, shard, steps_per_epoch

#: The 20 VOC classes in the devkit's order (VOCdevkit/VOCcode/VOCinit.m); a label is an index here.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

#: The paper's splits (§5): train on VOC 2007 + 2012 trainval, evaluate on VOC 2007 test.
TRAIN_SPLITS: tuple[tuple[str, str], ...] = (("2007", "trainval"), ("2012", "trainval"))
TEST_SPLITS: tuple[tuple[str, str], ...] = (("2007", "test"),)

#: ImageNet channel statistics (the usual normalization for ResNet backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_splits(text: str) -> tuple[tuple[str, str], ...]:
    """``"2007-trainval+2012-trainval"`` -> ``(("2007", "trainval"), ("2012", "trainval"))``."""
    out = []
    for part in text.split("+"):
        year, sep, split = part.strip().partition("-")
        if not sep or not year.isdigit() or not split:
            raise DatasetError(f"bad VOC split {part!r} in {text!r}; write YEAR-SPLIT joined by '+', "
                               f"e.g. 2007-trainval+2012-trainval")
        out.append((year, split))
    return tuple(out)


# --------------------------------------------------------------------------------------------- index

@dataclass(frozen=True)
class VOCRecord:
    """One image of the index: where it is, its size and its objects (boxes in pixels of the original)."""

    image: Path
    annotation: Path
    width: int
    height: int
    boxes: Tensor  # (N, 4) float32, x1 y1 x2 y2 in continuous pixel coordinates
    labels: Tensor  # (N,) int64, indices into the dataset's classes
    difficult: Tensor  # (N,) bool


def voc_root(data_dir: str | Path) -> Path:
    """The folder that holds VOC2007/, VOC2012/: ``data_dir/VOCdevkit`` or ``data_dir`` itself."""
    data_dir = Path(data_dir)
    return data_dir / "VOCdevkit" if (data_dir / "VOCdevkit").is_dir() else data_dir


def _text(node: ET.Element, path: str, where: Path) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise DatasetError(f"{where}: malformed annotation, no <{path}>")
    return found.text.strip()


def _number(node: ET.Element, path: str, where: Path) -> float:
    text = _text(node, path, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{where}: malformed annotation, <{path}> is {text!r}, not a number") from None


def parse_annotation(path: Path, classes: Sequence[str]) -> tuple[int, int, Tensor, Tensor, Tensor]:
    """One VOC XML file -> (width, height, boxes (N, 4) float32 pixels, labels (N,), difficult (N,)).

    Checks what the devkit assumes: well-formed XML, a positive size, known class names, and boxes
    with 1 <= xmin < xmax <= width and 1 <= ymin < ymax <= height.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    width, height = _number(root, "size/width", path), _number(root, "size/height", path)
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DatasetError(f"{path}: image size {width:g}x{height:g} is not a positive whole number of pixels")
    index = {name: k for k, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", path)
        if name not in index:
            raise DatasetError(f"{path}: object {k} has unknown class {name!r}; known: {', '.join(classes)}")
        x1, y1, x2, y2 = (_number(obj, f"bndbox/{t}", path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x2 <= x1 or y2 <= y1:
            raise DatasetError(f"{path}: object {k} ({name}) has an empty box: xmin={x1:g} xmax={x2:g} "
                               f"ymin={y1:g} ymax={y2:g} (needs xmax > xmin and ymax > ymin)")
        if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
            raise DatasetError(f"{path}: object {k} ({name}) box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside "
                               f"the {width:g}x{height:g} image (VOC boxes are 1-based pixel indices)")
        flag = obj.find("difficult")
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        labels.append(index[name])
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    return (int(width), int(height), torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels, dtype=torch.int64), torch.tensor(difficult, dtype=torch.bool))


def read_split(root: Path, year: str, split: str) -> list[str]:
    """Image ids listed in ``VOC{year}/ImageSets/Main/{split}.txt``."""
    year_dir = root / f"VOC{year}"
    if not year_dir.is_dir():
        raise DatasetError(f"{year_dir} not found: expected VOCdevkit/VOC{year}/ with Annotations/, "
                           f"ImageSets/Main/ and JPEGImages/ under the data folder (--data-dir)")
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    try:
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read split file ({e.strerror or e})") from None
    if not ids:
        raise DatasetError(f"{path}: split file lists no images")
    return ids


def load_index(data_dir: str | Path, splits: Sequence[tuple[str, str]],
               classes: Sequence[str] = VOC_CLASSES) -> list[VOCRecord]:
    """Every image of ``splits`` (in split-file order, splits concatenated) with its parsed annotation."""
    root = voc_root(data_dir)
    if not splits:
        raise DatasetError("no VOC splits chosen")
    records = []
    for year, split in splits:
        year_dir = root / f"VOC{year}"
        split_file = year_dir / "ImageSets" / "Main" / f"{split}.txt"
        for image_id in read_split(root, year, split):
            xml = year_dir / "Annotations" / f"{image_id}.xml"
            jpg = year_dir / "JPEGImages" / f"{image_id}.jpg"
            for f in (xml, jpg):
                if not f.is_file():
                    raise DatasetError(f"{f}: missing, but {split_file} lists image {image_id}")
            width, height, boxes, labels, difficult = parse_annotation(xml, classes)
            records.append(VOCRecord(jpg, xml, width, height, boxes, labels, difficult))
    return records


# ------------------------------------------------------------------------------------------- dataset

@dataclass
class Targets:
    """A batch's ground truth, padded to the most boxes of any image in it.

    Moves like a tensor (``.to(device)``, ``.pin_memory()``), so the trainer treats it as it treats
    classification labels.
    """

    boxes: Tensor  # (B, M, 4) float32, x1 y1 x2 y2 as fractions of the input image
    labels: Tensor  # (B, M) int64, -1 where padded
    difficult: Tensor  # (B, M) bool, False where padded
    index: Tensor  # (B,) int64, each image's index in its dataset

    def to(self, device, non_blocking: bool = False) -> "Targets":
        return Targets(*(t.to(device, non_blocking=non_blocking) for t in self.tensors()))

    def pin_memory(self) -> "Targets":
        return Targets(*(t.pin_memory() for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.boxes, self.labels, self.difficult, self.index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def valid(self) -> Tensor:
        """(B, M) bool: a real box (not padding)."""
        return self.labels >= 0


def flip_boxes(boxes: Tensor) -> Tensor:
    """Mirror (..., 4) fraction boxes left-right: x1, x2 -> 1 - x2, 1 - x1."""
    return torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0], boxes[..., 3]], -1)


class VOCDetection(Dataset):
    """VOC images resized to ``size`` x ``size``, normalized, with their boxes as image fractions.

    ``dataset[i]`` or ``dataset[(i, flip)]`` -> (image (3, size, size) float32, target dict with
    ``boxes`` (N, 4), ``labels`` (N,), ``difficult`` (N,), ``index``); ``flip`` mirrors image and boxes
    (YOLOv2 trains with flips; the paper trains without augmentation). Batch with :func:`collate`.
    """

    def __init__(self, data_dir: str | Path, splits: Sequence[tuple[str, str]], size: int = 416,
                 classes: Sequence[str] = VOC_CLASSES, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size, self.classes = size, tuple(classes)
        self.records = load_index(data_dir, splits, self.classes)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, i: int) -> Tensor:
        """Image ``i`` decoded, converted to RGB and resized: (3, size, size) uint8."""
        from PIL import Image, UnidentifiedImageError

        from .transforms import open_image

        rec = self.records[i]
        try:
            with open_image(rec.image) as im:
                if im.size != (rec.width, rec.height):
                    raise DatasetError(f"{rec.image}: image is {im.size[0]}x{im.size[1]} but {rec.annotation} "
                                       f"says {rec.width}x{rec.height}")
                im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{rec.image}: cannot decode image ({e})") from None
        hwc = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        return hwc.permute(2, 0, 1)

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[Tensor, dict[str, Tensor]]:
        i, flip = (int(key[0]), bool(key[1])) if isinstance(key, (tuple, list)) else (int(key), False)
        rec = self.records[i]
        x = self.load_image(i)
        boxes = rec.boxes / torch.tensor([rec.width, rec.height, rec.width, rec.height], dtype=torch.float32)
        if flip:
            x, boxes = x.flip(-1), flip_boxes(boxes)
        x = (x.float() / 255 - self.mean) / self.std
        return x, {"boxes": boxes, "labels": rec.labels, "difficult": rec.difficult,
                   "index": torch.tensor(i, dtype=torch.int64)}


def collate(items: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Targets]:
    """Stack images to (B, 3, S, S) and pad boxes to the most in any image (labels -1 where padded)."""
    xs, ts = zip(*items)
    m = max(len(t["labels"]) for t in ts)
    b = len(ts)
    boxes = torch.zeros(b, m, 4, dtype=torch.float32)
    labels = torch.full((b, m), -1, dtype=torch.int64)
    difficult = torch.zeros(b, m, dtype=torch.bool)
    for k, t in enumerate(ts):
        n = len(t["labels"])
        boxes[k, :n], labels[k, :n], difficult[k, :n] = t["boxes"], t["labels"], t["difficult"]
    return torch.stack(xs), Targets(boxes, labels, difficult, torch.stack([t["index"] for t in ts]))


# ------------------------------------------------------------------------------------ shards, batches

def shard_indices(n: int, world_size: int, rank: int, epoch: int, seed: int) -> Tensor:
    """Worker ``rank``'s disjoint shard of range(n) in ``epoch``: floor(n / world_size) indices.

    The same permutation and cut as :func:`resist.data.sharding.batch_indices` (seeded by (seed, epoch)),
    so that walking the shard in batches gives exactly its batches.
    """
    return epoch_permutation(n, seed, epoch)[shard(n, world_size, rank)]


def batch_keys(n: int, world_size: int, rank: int, step: int, batch_size: int, seed: int,
               flip: bool = False) -> list[tuple[int, bool]]:
    """Dataset keys ``(index, flip)`` of worker ``rank``'s batch at global ``step``: a pure function of
    its arguments, so that a run resumed at any step sees the batches it would have seen.

    Indices come from :func:`resist.data.sharding.batch_indices`; with ``flip`` each image is mirrored
    with probability 1/2, drawn from :func:`resist.data.sharding.batch_generator` (seed, rank, step).
    """
    idx = batch_indices(n, world_size, rank, step, batch_size, seed)
    flips = (torch.rand(len(idx), generator=batch_generator(seed, rank, step)) < 0.5) if flip else \
        torch.zeros(len(idx), dtype=torch.bool)
    return list(zip(idx.tolist(), flips.tolist()))


class StepBatchSampler(Sampler[list[tuple[int, bool]]]):
    """The keys of :func:`batch_keys` for steps ``start`` .. ``stop - 1`` (on and on when ``stop`` is
    ``None``), one list per batch."""

    def __init__(self, n: int, world_size: int, rank: int, batch_size: int, seed: int, start: int, stop: int | None,
                 flip: bool = False):
        steps_per_epoch(n, world_size, batch_size)  # raises if the dataset is too small
        self.args = (n, world_size, rank)
        self.batch_size, self.seed, self.start, self.stop, self.flip = batch_size, seed, start, stop, flip

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        step = self.start
        while self.stop is None or step < self.stop:  # unbounded: the consumer stops asking
            yield batch_keys(*self.args, step, self.batch_size, self.seed, self.flip)
            step += 1


class DetectionBatchStream:
    """Worker ``rank``'s training batches, ``.batch(step)`` -> (x (B, 3, S, S), :class:`Targets`), decoded
    ahead in ``num_workers`` DataLoader processes (in this process when 0).

    Consecutive steps come from one DataLoader iterator; asking for any other step (a resume, a new
    run segment) starts a new iterator there. ``total_steps`` bounds the prefetching; ``None`` (the
    trainer's streams, which stop asking when training ends) leaves it unbounded, so the loader
    processes decode at most their prefetch of batches past the last step.
    """

    def __init__(self, dataset: VOCDetection, world_size: int, rank: int, batch_size: int, seed: int,
                 total_steps: int | None, flip: bool = False, num_workers: int = 2, multiprocessing_context=None):
        self.dataset, self.world_size, self.rank = dataset, world_size, rank
        self.batch_size, self.seed, self.total_steps, self.flip = batch_size, seed, total_steps, flip
        self.num_workers, self.mp_context = num_workers, multiprocessing_context
        self.steps_per_epoch = steps_per_epoch(len(dataset), world_size, batch_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self._it: Iterator | None = None
        self._next = -1

    def batch(self, step: int) -> tuple[Tensor, Targets]:
        if step < 0 or (self.total_steps is not None and step >= self.total_steps):
            raise ValueError(f"step {step} outside [0, {self.total_steps})")
        if step != self._next or self._it is None:
            sampler = StepBatchSampler(len(self.dataset), self.world_size, self.rank, self.batch_size, self.seed,
                                       step, self.total_steps, self.flip)
            loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                num_workers=self.num_workers, multiprocessing_context=self.mp_context
                                if self.num_workers > 0 else None)
            self._it = iter(loader)
        self._next = step + 1
        with one_line_errors():
            return next(self._it)

    def close(self) -> None:
        """Stop the loader processes now (the trainer closes its streams when training ends)."""
        self._it = None
        self._next = -1


def eval_batches(dataset: VOCDetection, batch_size: int = 10, num_workers: int = 2,
                 multiprocessing_context=None) -> Iterator[tuple[Tensor, Targets]]:
    """All of ``dataset`` in order, unflipped, batched with :func:`collate` (the last batch may be short)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers,
                        multiprocessing_context=multiprocessing_context if num_workers > 0 else None)
    with one_line_errors():
        yield from loader


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Re-raise a :class:`DatasetError` from a DataLoader worker as its own one line: the DataLoader
    re-raises it in this process with the worker's whole traceback as the message."""
    try:
        yield
    except DatasetError as e:
        raise DatasetError(str(e).rsplit("DatasetError: ", 1)[-1]) from None


# --------------------------------------------------------------------------------- the trainer's view

def splits_text(splits: Sequence[tuple[str, str]]) -> str:
    """``(("2007", "trainval"), ("2012", "trainval"))`` -> ``"2007-trainval+2012-trainval"``."""
    return "+".join(f"{year}-{split}" for year, split in splits)


class VOCDataset:
    """Pascal VOC as the trainer takes datasets (``--task detection --dataset voc``, paper §5): training
    batches from :class:`DetectionBatchStream` (``train_stream``), the test set in order
    (``eval_sets``), ``n_train`` images per epoch, the 20 VOC classes.

    Both splits are parsed and checked here, before any rank starts, so bad annotations, unknown
    classes, missing images and empty split files end the run at once with one line naming the file.
    ``flip`` mirrors training images (and boxes) with probability 1/2 in the augmented stream only;
    the paper trains without (§5: "no data augmentation techniques are used").
    """

    name = "voc"

    def __init__(self, data_dir: str | Path, train_splits: Sequence[tuple[str, str]] = TRAIN_SPLITS,
                 test_splits: Sequence[tuple[str, str]] = TEST_SPLITS, size: int = 416, flip: bool = False,
                 classes: Sequence[str] = VOC_CLASSES):
        self.train = VOCDetection(data_dir, train_splits, size, classes)
        self.test = VOCDetection(data_dir, test_splits, size, classes)
        self.flip = flip
        #: The class of each output index (written to the run folder as classes.json; checked on resume
        #: and across torchrun nodes like an image folder's).
        self.classes = self.train.classes
        self.source = (f"Pascal VOC in {voc_root(data_dir)} (train {splits_text(train_splits)}, "
                       f"{len(self.train)} images; test {splits_text(test_splits)}, {len(self.test)}; {size} px)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        """Training images per epoch (every worker takes a disjoint 1 / S of them)."""
        return len(self.train)

    def train_stream(self, world_size: int, rank: int, batch_size: int, seed: int, augment: bool = True, *,
                     device=None, loader_workers: int = 0, bad=None) -> DetectionBatchStream:
        """Worker ``rank``'s batches, decoded in ``loader_workers`` processes; flipped only when both
        ``augment`` (the trainer's main stream, not its BatchNorm-recalibration one) and ``flip``."""
        return DetectionBatchStream(self.train, world_size, rank, batch_size, seed, None, flip=self.flip and augment,
                                    num_workers=loader_workers)

    def eval_sets(self, batch_size: int, limit: int | None = None, *, device=None, loader_workers: int = 0,
                  bad=None) -> dict:
        """The test images in order, unflipped (the first ``limit`` of them)."""
        test = self.test if limit is None or limit >= len(self.test) else Subset(self.test, range(limit))
        return {"test": lambda: eval_batches(test, batch_size, loader_workers)}
