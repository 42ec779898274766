"""Trainer, run folders and metrics."""

from .metrics import MetricsWriter, read_metrics
from .schedule import Schedule
from .trainer import TrainingError, run_worker, setup_logging, train

__all__ = ["MetricsWriter", "Schedule", "TrainingError", "read_metrics", "run_worker", "setup_logging", "train"]
