"""Data pipeline: in-memory datasets as uint8 HWC tensors with batched augmentation, class-per-folder
image datasets streamed from disk, and deterministic per-worker batches."""
from .augment import augment, to_float
from .datasets import DATASETS, Dataset, DatasetError, ImageArrays, load_dataset
from .folder import BadImages, FolderDataset, load_imagefolder
from .base import BatchSource, DataSource
from .sharding import BatchStream, batch_generator, batch_indices, eval_batches, shard, steps_per_epoch
from .elastic import DataCursor, Deal, ElasticBatches, commit, deal, examples_done, usable_positions

__all__ = [
    "DATASETS", "Dataset", "DatasetError", "ImageArrays", "load_dataset",
    "BadImages", "FolderDataset", "load_imagefolder",
    "augment", "to_float",
    "BatchSource", "DataSource",
    "BatchStream", "batch_generator", "batch_indices", "eval_batches", "shard", "steps_per_epoch",
    "DataCursor", "Deal", "ElasticBatches", "commit", "deal", "examples_done", "usable_positions",
]
