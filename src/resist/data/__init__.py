"""Data pipeline: datasets as uint8 HWC tensors, batched augmentation and deterministic per-worker batches."""
from .augment import augment, to_float
from .datasets import DATASETS, Dataset, DatasetError, ImageArrays, load_dataset
from .sharding import BatchStream, batch_generator, batch_indices, eval_batches, steps_per_epoch

__all__ = [
    "DATASETS", "Dataset", "DatasetError", "ImageArrays", "load_dataset",
    "augment", "to_float",
    "BatchStream", "batch_generator", "batch_indices", "eval_batches", "steps_per_epoch",
]
