"""The training algorithms; they reach peers only through :class:`resist.comm.Communicator`.

Which names exist is :data:`resist.registry.ALGORITHMS`; :func:`resist.registry.algorithm_class` builds one.
"""

from .base import Algorithm, Evaluator
from .data_parallel import DataParallel
from .ensemble import Ensemble
from .local_sgd import LocalSGD
from .parts import PartStore, init_model, init_part
from .resist import ResIST

__all__ = ["Algorithm", "DataParallel", "Ensemble", "Evaluator", "LocalSGD", "PartStore", "ResIST",
           "init_model", "init_part"]
