"""Trainer, run folders and metrics."""

from .metrics import MetricsWriter, read_metrics
from .trainer import Schedule, TrainingError, run_worker, setup_logging, train

__all__ = ["MetricsWriter", "Schedule", "TrainingError", "read_metrics", "run_worker", "setup_logging", "train"]
