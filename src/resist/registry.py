"""Every vocabulary of the package in one place: config validation, the CLI's choices and help, and
the README's lists read these. Algorithms are named here with where their class lives, so that this
module stays free of torch: adding an algorithm is one file in ``algorithms/`` and one line below."""

from __future__ import annotations

import importlib

#: name -> "module:Class" of the algorithm, and one line on what it is.
ALGORITHMS: dict[str, tuple[str, str]] = {
    "resist": ("resist.algorithms.resist:ResIST", "independent sub-ResNets, averaged and repartitioned each round"),
    "local_sgd": ("resist.algorithms.local_sgd:LocalSGD", "whole model on every worker, averaged each round"),
    "data_parallel": ("resist.algorithms.data_parallel:DataParallel", "gradients averaged after every step"),
    "ensemble": ("resist.algorithms.ensemble:Ensemble", "the first round's sub-ResNets, never synchronized"),
    "streaming_diloco": ("resist.algorithms.streaming:StreamingDiLoCo",
                         "local SGD whose fragments sync staggered, each behind the next steps (Streaming DiLoCo)"),
}
PARTITIONS = ("section3", "naive")
#: How ResIST's plan adapts to workers of different speeds (``--balance``; ``plan.make_balanced_plan``).
BALANCE_MODES = ("none", "depth", "steps", "depth+steps")
BN_EVAL_MODES = ("average", "batch", "recalibrate")
RUNTIMES = ("inprocess", "dist")
BACKENDS = ("gloo", "nccl")
DEVICES = ("cpu", "cuda", "auto")
#: In-memory datasets (CIFAR, digits, synthetic), class-per-folder image trees streamed from disk,
#: text for language modelling (the Python standard library's sources, or a folder of text files), and
#: Pascal VOC for detection.
DATASETS = ("cifar10", "cifar100", "digits", "synthetic", "imagefolder", "pystdlib", "text", "voc")
#: Datasets of bytes, for the language-modelling task.
TEXT_DATASETS = ("pystdlib", "text")
#: Datasets of images with boxes, for the detection task (a VOC devkit tree, ``tasks/detection/voc.py``).
DETECTION_DATASETS = ("voc",)
#: What a run learns (``resist.tasks``): image classes, the next byte of text, or objects' boxes and classes.
TASKS = ("classification", "lm", "detection")
#: The prefix of the detection models' registry names (``yolo_resnet101``, ...): a ResNet + YOLOv2 head.
DETECTION_MODEL_PREFIX = "yolo_"
#: Datasets whose images are files on disk, decoded in loader processes (``data/folder.py``).
FOLDER_DATASETS = ("imagefolder",)
#: Stems: CIFAR's 3x3 stride-1 conv, or ImageNet's 7x7 stride-2 conv + 3x3 stride-2 max pool (ResNets);
#: 4-pixel patches of 32x32 images, or 16-pixel patches of 224x224 ones (ViTs).
STEMS = ("cifar", "imagenet")
INNER_OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine")
EPOCH_UNITS = ("shard", "dataset")
AMP_MODES = ("none", "bf16", "fp16")
#: What may travel compressed (paper Appendix A.5): none, 16-bit floats, k-bit quantization, sparsification.
CODECS = ("none", "fp16", "bf16", *(f"q{k}" for k in range(1, 9)), "topk", "randk")
COMPRESS_WHAT = ("weights", "update")
#: Algorithms that can send their synchronization compressed.
COMPRESSIBLE = ("resist", "local_sgd", "data_parallel")
#: Algorithms that deal the partitionable blocks out to sub-networks (``plan.make_plan``).
DEALING = ("resist", "ensemble")
#: Algorithms whose rounds end in an average of the parts, which an outer optimizer can step.
OUTER_STEPPED = ("resist", "local_sgd", "streaming_diloco")
#: Algorithms that can average BatchNorm statistics less often than the parameters (``bn_sync_every``).
BN_DEFERRABLE = ("resist", "local_sgd")
#: Algorithms that cut the model into fragments synchronized on a staggered schedule (``--fragments``).
FRAGMENTED = ("streaming_diloco",)


ABBREVIATIONS = ("et al", "e.g", "i.e", "cf", "vs", "Fig", "Eq", "resp")


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring: up to a '. ' outside parentheses and not after an
    abbreviation ("Douillard et al. 2023" and "e.g. 0.5" go on)."""
    depth = 0
    for i, ch in enumerate(doc):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and doc[i + 1:i + 2] in (" ", "") and not doc[:i].endswith(ABBREVIATIONS):
            return doc[:i]
    return doc.rstrip(".")


def did_you_mean(name: object, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``name``, or nothing."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def algorithm_class(name: str) -> type:
    """The class registered as ``name`` (imported on first use)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}{did_you_mean(name, ALGORITHMS)}; "
                         f"choose one of: {', '.join(ALGORITHMS)}")
    module, _, cls = ALGORITHMS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)
