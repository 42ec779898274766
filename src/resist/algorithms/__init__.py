"""The training algorithms; they reach peers only through :class:`resist.comm.Communicator`."""

from .base import Worker
from .ensemble import Ensemble
from .local_sgd import DataParallel, LocalSGD
from .resist import ResIST

ALGORITHMS: dict[str, type[Worker]] = {
    "resist": ResIST,
    "local_sgd": LocalSGD,
    "data_parallel": DataParallel,
    "ensemble": Ensemble,
}

__all__ = ["ALGORITHMS", "DataParallel", "Ensemble", "LocalSGD", "ResIST", "Worker"]
