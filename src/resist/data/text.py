"""Text for byte-level language modelling: a real corpus that every machine has, split by file.

The default corpus is the Python standard library's own source files (``*.py`` under the running
interpreter's ``stdlib`` directory): real text (code, comments, docstrings) installed wherever this
package runs, no network needed. ``data_dir`` takes any folder of text files instead. Files are split
into train and test by a hash of their relative path (a fixed split that does not depend on which other
files exist), the split is returned so that the run folder can record it, and the bytes of each side
are concatenated (files separated by a NUL byte) into one uint8 tensor.

Training batches are windows of ``context + 1`` bytes (inputs and next-byte targets). An epoch is one
pass over the non-overlapping windows; each worker draws a disjoint shard of them, a pure function of
(seed, epoch, rank) as for images (:func:`resist.data.sharding.batch_indices`), and a random offset per
epoch within the first window so that window boundaries move between epochs.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .base import DatasetError
from ..seeds import mix
from .sharding import batch_indices, steps_per_epoch

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")


@dataclass
class TextCorpus:
    """Train and test bytes, and which files went where (relative paths, sorted)."""

    name: str
    train: torch.Tensor  # (N,) uint8
    test: torch.Tensor  # (M,) uint8
    train_files: list[str]
    test_files: list[str]
    source: str

    def split_record(self) -> dict:
        """What the run folder keeps: where the text came from and the exact split."""
        digest = lambda t: hashlib.sha256(t.numpy().tobytes()).hexdigest()  # noqa: E731
        return {"source": self.source, "train_files": self.train_files, "test_files": self.test_files,
                "train_bytes": len(self.train), "test_bytes": len(self.test),
                "train_sha256": digest(self.train), "test_sha256": digest(self.test)}


def _in_test(rel: str, test_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(os.fsencode(rel)).digest()[:8], "big")  # a name's bytes, UTF-8 or not
    return h / 2**64 < test_fraction


def load_text(data_dir: str | Path | None = None, test_fraction: float = 0.1,
              max_bytes: int | None = None) -> TextCorpus:
    """The corpus in ``data_dir`` (every text file below it), or the standard library's sources.

    ``max_bytes`` caps each side (train and test), taking whole files in sorted order: a smaller,
    still fixed, corpus for quick runs."""
    if data_dir is None:
        root, source = Path(sysconfig.get_paths()["stdlib"]), "python-stdlib"
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    else:
        root, source = Path(data_dir), str(data_dir)
        if not root.is_dir():
            raise DatasetError(f"text folder {root} does not exist; pass --data-dir a folder of text files")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DatasetError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {root}")
    sides: dict[bool, tuple[list[str], list[bytes]]] = {False: ([], []), True: ([], [])}
    sizes = {False: 0, True: 0}
    for path in files:
        rel = path.relative_to(root).as_posix()
        side = _in_test(rel, test_fraction)
        if max_bytes is not None and sizes[side] >= max_bytes:
            continue
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None
        sides[side][0].append(rel)
        sides[side][1].append(data + b"\0")
        sizes[side] += len(data) + 1
    (train_files, train), (test_files, test) = sides[False], sides[True]
    if not train or not test:
        raise DatasetError(f"{len(files)} text file(s) under {root} leave the {'train' if not train else 'test'} "
                           f"split empty: each file goes to test with probability {test_fraction:g} by a hash of its "
                           f"path; add files (or split a large one into several)")

    def as_tensor(chunks: list[bytes]) -> torch.Tensor:
        blob = b"".join(chunks)
        if max_bytes is not None:
            blob = blob[:max_bytes]
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8)

    return TextCorpus("text", as_tensor(train), as_tensor(test), train_files, test_files, source)


class TextStream:
    """One worker's training windows: ``batch(step)`` -> (inputs (B, T), targets (B, T)) int64."""

    def __init__(self, data: torch.Tensor, context: int, world_size: int, rank: int, batch_size: int, seed: int):
        self.data, self.context = data, context
        self.world_size, self.rank, self.batch_size, self.seed = world_size, rank, batch_size, seed
        self.windows = (len(data) - 1) // context - 1  # the last window may not fit after an offset
        if self.windows < world_size * batch_size:
            raise DatasetError(f"the text has {len(data):,} bytes: too few for {world_size} worker(s) x batch "
                               f"{batch_size} x context {context}; lower --batch-size or the context")
        self.steps_per_epoch = steps_per_epoch(self.windows, world_size, batch_size)

    def close(self) -> None:
        """Nothing to stop (the windows are cut in this process)."""

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(self.windows, self.world_size, self.rank, step, self.batch_size, self.seed)
        epoch = step // self.steps_per_epoch
        # the same offset on every rank in an epoch (a function of seed and epoch only), so shards stay disjoint
        offset = int(torch.randint(self.context, (1,), generator=torch.Generator().manual_seed(mix(0x7E47, self.seed, epoch))))
        starts = offset + idx * self.context
        rows = self.data[starts[:, None] + torch.arange(self.context + 1)].long()  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]


def text_eval_batches(data: torch.Tensor, context: int, batch_size: int,
                      limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every non-overlapping window of the test text (or the first ``limit``), in order."""
    n = (len(data) - 1) // context
    if limit is not None:
        n = min(n, limit)
    for lo in range(0, n, batch_size):
        starts = torch.arange(lo, min(n, lo + batch_size)) * context
        rows = data[starts[:, None] + torch.arange(context + 1)].long()
        yield rows[:, :-1], rows[:, 1:]


class TextDataset:
    """A text corpus as the trainer takes datasets: ``train_stream`` / ``eval_sets`` over byte windows of
    ``context`` tokens (targets: the next bytes), 256 outputs (the byte values)."""

    classes = None
    num_classes = 256

    def __init__(self, corpus: TextCorpus, context: int):
        self.corpus, self.context = corpus, context
        self.name, self.source = corpus.name, corpus.source
        self.test = corpus.test
        if (len(corpus.test) - 1) // context < 1:
            raise DatasetError(f"the test text has {len(corpus.test):,} bytes, fewer than one window of {context}")

    def split_record(self) -> dict:
        """What the run folder records (``split.json``): the corpus, its split by file, its bytes."""
        return self.corpus.split_record()

    @property
    def n_train(self) -> int:
        """Training examples per epoch: the non-overlapping windows."""
        return (len(self.corpus.train) - 1) // self.context - 1

    def train_stream(self, world_size: int, rank: int, batch_size: int, seed: int, augment: bool = True, *,
                     device=None, loader_workers: int = 0, bad=None) -> "TextStream":
        return TextStream(self.corpus.train, self.context, world_size, rank, batch_size, seed)

    def eval_sets(self, batch_size: int, limit: int | None = None, *, device=None, loader_workers: int = 0,
                  bad=None) -> dict:
        """The test text's windows in order (its first ``limit`` windows)."""
        return {"test": lambda: text_eval_batches(self.corpus.test, self.context, batch_size, limit)}
