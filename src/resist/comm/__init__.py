"""Communicators: the only way algorithms reach their peers."""

import importlib

from .base import ByteCounter, CommError, Communicator
from .local import LocalCommunicator, LocalGroup, run_in_process

# The torch.distributed runtime is imported on first use, so that importing resist.comm has no
# torch.distributed side effects (and works where it is unavailable).
_LAZY = {
    "DistCommunicator": ".dist",
    "spawn": ".launch",
    "run_from_env": ".launch",
    "default_backend": ".launch",
    "find_free_port": ".launch",
    # Elastic membership; torchft itself is imported only when a torchft membership is used.
    "Quorum": ".membership",
    "Membership": ".membership",
    "LocalCoordinator": ".membership",
    "LocalMembership": ".membership",
    "TorchftMembership": ".membership",
    "start_lighthouse": ".membership",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ByteCounter", "CommError", "Communicator", "LocalCommunicator", "LocalGroup", "run_in_process",
    *_LAZY,
]
