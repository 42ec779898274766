"""What a run is built from, shared by the trainer and elastic training: the device, the model factory,
the algorithm from the registry, the dataset, and the package's one logger."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import torch

from ..algorithms import Algorithm
from ..comm import Communicator
from ..config import Config
from ..data import DataSource
from ..io import printable
from ..models import create_model
from ..plan import whole_network_rounds
from ..registry import algorithm_class
from ..tasks import make_task

log = logging.getLogger("resist")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def model_builder(cfg: Config, num_classes: int) -> Callable[[], torch.nn.Module]:
    """A factory for the architecture on the meta device: workers materialize only what they hold."""
    extra = {"layers": cfg.model.layers} if cfg.model.layers is not None else {}
    if cfg.model.stem is not None:
        extra["stem"] = cfg.model.stem
    extra.update(make_task(cfg.data.task).model_options(cfg.data))

    def build() -> torch.nn.Module:
        with torch.device("meta"):
            return create_model(cfg.model.name, num_classes=num_classes, width=cfg.model.width, **extra)

    return build


def build_algorithm(comm: Communicator, cfg: Config, num_classes: int, device: torch.device,
                    steps_per_epoch: int) -> Algorithm:
    """This rank's algorithm object, from the registry, given the parts of the config it needs."""
    a, cls = cfg.algo, algorithm_class(cfg.algo.name)
    phases = {}
    if cls.uses_warmup:  # only such an algorithm takes whole-network rounds
        warmup_rounds, cooldown_from = whole_network_rounds(cfg.optim.epochs, steps_per_epoch, a.local_iters,
                                                            a.warmup_epochs, a.cooldown_epochs)
        phases = {"warmup_rounds": warmup_rounds, "cooldown_from": cooldown_from}
    return cls(comm, model_builder(cfg, num_classes), device, a, cfg.run.seed, **phases)


def load_data(cfg: Config, download: bool = False) -> DataSource:
    """The dataset ``cfg.data`` names, loaded as its task loads it (image folders: scanned, not decoded)."""
    return make_task(cfg.data.task).load(cfg.data, download)


def num_classes_of(cfg: Config, dataset: DataSource) -> int:
    n = cfg.model.num_classes or dataset.num_classes
    if n < dataset.num_classes:
        raise ValueError(f"num_classes {n} is below the dataset's {dataset.num_classes} classes")
    return n


class _PrintableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))  # a file name that is not UTF-8 (a skipped image)


def setup_logging(verbose: bool = False) -> None:
    """One logger for the package; messages to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
