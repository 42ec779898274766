"""Typed, validated configuration: the schema of a training job.

Every field has a docstring; every bad value raises ``ValueError`` with a one-line message at
construction. Named presets are functions over this base config (:mod:`resist.presets`); the CLI takes a
preset name plus overrides, and the resolved config is written as ``config.json`` into every run folder.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .registry import (ALGORITHMS, DETECTION_DATASETS, FOLDER_DATASETS, LOGGERS, TEXT_DATASETS, AmpMode, Backend,
                       BalanceMode, BNEvalMode, Codec, CompressWhat, Dataset, Device, EpochUnit, InnerOptimizer,
                       LRSchedule, Partition, Runtime, Stem, Task, algorithms_that, can, did_you_mean, model_task,
                       models_for)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


#: What a value is called in the message that refuses it, where not the field's own name.
_NOUNS = {"partition": "partition mode", "compress": "codec", "inner": "inner optimizer", "amp": "amp mode",
          "balance": "balance mode"}


def vocabulary(hint: Any) -> tuple[str, ...] | None:
    """The names a field's type allows when it is a ``Literal`` (or an optional one), else ``None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


@functools.lru_cache(maxsize=None)
def vocabularies(cls: type) -> dict[str, tuple[tuple[str, ...], bool]]:
    """``field -> (allowed names, whether None is allowed too)`` for the fields of a config section whose
    type is a vocabulary (a ``Literal`` of ``resist.registry``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (v, type(None) in typing.get_args(hints[f.name]))
            for f in dataclasses.fields(cls) if (v := vocabulary(hints[f.name])) is not None}


def _check_vocabularies(section: Any) -> None:
    """Each vocabulary-typed field of ``section`` holds one of its names."""
    for name, (allowed, optional) in vocabularies(type(section)).items():
        value = getattr(section, name)
        if not (value in allowed or (optional and value is None)):
            raise ValueError(f"unknown {_NOUNS.get(name, name)} {value!r}{did_you_mean(value, allowed)}; "
                             f"choose one of: {', '.join(allowed)}")


def _either(names: Any) -> str:
    """``a, b or c``."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


FLOAT32_MAX = 3.4028234663852886e38
# Every wait on a peer takes a finite timeout (threading, datetime.timedelta, gloo and NCCL all refuse
# inf or nan); 30 days is no limit in practice and far below any of theirs.
MAX_TIMEOUT_S = 30 * 24 * 3600.0


@dataclass
class ModelConfig:
    name: str = "paper_resnet101"
    """Registry name of the architecture (``resist models`` lists them)."""
    width: float = 1.0
    """Size multiplier: a ResNet's channels (1.0 is the paper's width; 0.25 trains at CPU scale), a
    ViT's embedding dimension."""
    num_classes: int | None = None
    """Output classes; ``None`` takes the dataset's."""
    layers: tuple[int, ...] | None = None
    """Blocks per section, for the generic factories (``paper_resnet``, ``preact_resnet``, ``resnet``)."""
    stem: Stem | None = None
    """The stem: cifar (a ResNet's 3x3 conv, stride 1; a ViT's 4-pixel patches of 32x32 images) or imagenet
    (7x7 stride-2 conv and 3x3 stride-2 max pool for 224-pixel images, paper §5; a ViT's 16-pixel patches of
    224x224 images); ``None``: the architecture's own (cifar for every ResNet and ViT)."""

    def __post_init__(self) -> None:
        _check_vocabularies(self)
        if self.layers is not None:
            self.layers = tuple(self.layers)
            _check(len(self.layers) == 4 and all(n >= 1 for n in self.layers),
                   f"layers must be 4 positive block counts, got {self.layers}")
        _check(self.width > 0, f"model width must be > 0, got {self.width}")
        _check(self.num_classes is None or self.num_classes >= 1,
               f"num_classes must be >= 1, got {self.num_classes}")


@dataclass
class DataConfig:
    task: Task = "classification"
    """What is learned (``resist.registry.TASKS``): ``classification`` of images, ``lm``, the next byte of
    text (a byte-level language model; metric: bits per byte), or ``detection``, objects' boxes and
    classes (Pascal VOC with a yolo_* model, paper §5; metric: test loss, with mAP@0.5 beside it)."""
    dataset: Dataset = "cifar10"
    """The dataset (``resist.registry.DATASETS``; digits ship with scikit-learn, synthetic is for tests,
    imagefolder reads class-per-folder images from ``data_dir``/train and ``data_dir``/val)."""
    data_dir: str = "data"
    """Folder with the dataset files (CIFAR: numpy layout, python-version folder or official tarball;
    imagefolder: train/<class>/<image> and val/<class>/<image>, as an ImageNet tree is laid out)."""
    download: bool = False
    """Download the official CIFAR tarball (checksum-verified) when it is not in ``data_dir``."""
    augment: bool = True
    """Pad-4 random crop and horizontal flip on training batches (classification; detection has
    ``flip``, which this must leave on to take effect)."""
    batch_size: int = 128
    """Training batch per worker (paper: 128 on CIFAR)."""
    eval_batch_size: int = 500
    """Batch size for evaluation. It changes results under ``bn_eval=batch``, where each test batch is
    normalized with its own statistics; with ``average`` and ``recalibrate`` it only changes speed."""
    eval_limit: int | None = None
    """Evaluate on this many test images only (a quick look): the first ones of an in-memory test set or
    of VOC's test split, evenly spaced ones of an image folder (whose files are in class order); ``None``:
    the whole test set."""
    crop_size: int = 224
    """Image folders: side of the square training crop (random-resized crop) and of the evaluation center
    crop, taken after resizing the shorter side to 256/224 of it (224 for ImageNet, smaller for
    downsampled trees)."""
    loader_workers: int | None = None
    """Image folders and VOC: processes per worker that decode and augment images (DataLoader workers); 0
    decodes in the training process itself; ``None``: the cores this process may use divided by the
    workers on this machine, at most 4 (0 on 2 cores with 4 workers)."""
    extra_test: tuple[str, ...] = ()
    """Image folders: extra test sets as NAME=DIR, each a class-per-folder tree whose folders are
    training class names or class indices (the ImageNet-V2 layout), evaluated beside the test set."""
    context: int = 128
    """Language modelling: bytes per training window (the model's context length)."""
    text_bytes: int | None = None
    """Language modelling: use at most this many bytes of each split (whole files in sorted order), for
    quick runs; ``None``: the whole corpus."""
    skip_bad_images: bool = False
    """Image folders: skip (and count in summary.json) images that cannot be decoded, instead of
    stopping the run with the file's name."""
    input_size: int = 416
    """Detection: side in pixels of the square input every image is stretched to, boxes with it (paper §5
    and YOLOv2: 416, a 13 x 13 grid with the ImageNet stem's stride of 32)."""
    voc_train: str = "2007-trainval+2012-trainval"
    """Detection: the VOC splits trained on, YEAR-SPLIT joined by '+' (paper §5: 2007 and 2012 trainval)."""
    voc_test: str = "2007-test"
    """Detection: the VOC splits evaluated on (paper §5: the 2007 test set)."""
    flip: bool = False
    """Detection: mirror training images and their boxes left-right with probability 1/2 (YOLOv2 does; the
    paper's VOC runs use no augmentation, §5)."""

    def __post_init__(self) -> None:
        self.extra_test = tuple(self.extra_test)
        _check_vocabularies(self)
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.eval_limit is None or self.eval_limit >= 1, f"eval_limit must be >= 1, got {self.eval_limit}")
        _check(self.crop_size >= 8, f"crop_size must be >= 8, got {self.crop_size}")
        _check((self.task == "lm") == (self.dataset in TEXT_DATASETS)
               and (self.task == "detection") == (self.dataset in DETECTION_DATASETS),
               f"task {self.task} cannot learn from dataset {self.dataset}: language modelling (--task lm) reads "
               f"{' or '.join(TEXT_DATASETS)}, detection (--task detection) reads {' or '.join(DETECTION_DATASETS)}, "
               f"classification reads images")
        detection = self.task == "detection"
        _check(self.input_size >= 32, f"input_size must be >= 32 (one cell of a stride-32 network), got {self.input_size}")
        for name in ("voc_train", "voc_test"):
            _voc_splits(getattr(self, name), name)
        _check(not self.flip or detection, "--flip mirrors detection images; classification's flips are --augment")
        _check(not (self.flip and not self.augment), "--no-augment turns --flip off; drop one of them")
        _check(not (self.skip_bad_images and detection),
               "VOC images are checked against their annotations and cannot be skipped; fix or remove the file "
               "(and its line in ImageSets) and drop --skip-bad-images")
        _check(self.context >= 2, f"context must be >= 2, got {self.context}")
        _check(self.text_bytes is None or self.text_bytes >= 1024, f"text_bytes must be >= 1024, got {self.text_bytes}")
        _check(self.loader_workers is None or self.loader_workers >= 0,
               f"loader_workers must be >= 0, got {self.loader_workers}")
        _check(not self.extra_test or self.dataset in FOLDER_DATASETS,
               f"extra test sets are class-per-folder image trees, read with --dataset "
               f"{' or '.join(FOLDER_DATASETS)}, not {self.dataset}; drop --extra-test")
        _extra_tests(self.extra_test)

    @property
    def extra_tests(self) -> dict[str, str]:
        """The extra test sets, name -> folder, in the order given."""
        return _extra_tests(self.extra_test)


def _voc_splits(text: str, name: str) -> tuple[tuple[str, str], ...]:
    """``"2007-trainval+2012-trainval"`` -> ((year, split), ...); the same rule as the VOC reader's."""
    splits = []
    for part in str(text).split("+"):
        year, sep, split = part.strip().partition("-")
        _check(bool(sep) and year.isdigit() and bool(split),
               f"{name} takes YEAR-SPLIT joined by '+' (e.g. 2007-trainval+2012-trainval), got {text!r}")
        splits.append((year, split))
    return tuple(splits)


def _extra_tests(items: tuple[str, ...]) -> dict[str, str]:
    """``NAME=DIR`` items as name -> folder; names become metric keys, so they are kept plain."""
    sets: dict[str, str] = {}
    for item in items:
        name, sep, folder = str(item).partition("=")
        _check(bool(sep) and bool(folder), f"extra_test takes NAME=DIR, got {item!r}")
        # "test" and "train" name the run's own splits (metric keys, skipped-image counts).
        _check(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None and name not in ("test", "train"),
               f"extra test set name {name!r} must be letters, digits, '_', '.' or '-' (and not 'test' or 'train')")
        _check(name not in sets, f"extra test set {name!r} is given twice")
        sets[name] = folder
    return sets


@dataclass
class AlgoConfig:
    name: str = "resist"
    """The algorithm (``resist.registry.ALGORITHMS`` lists them with a line each)."""
    workers: int = 4
    """Number of workers S (one sub-ResNet each)."""
    local_iters: int = 50
    """Local SGD steps between synchronizations (paper default 50)."""
    min_depth: int = 0
    """Minimum partitioned blocks per sub-ResNet; blocks are shared to reach it (paper §2.6; 0 = off)."""
    partition: Partition = "section3"
    """Which blocks are dealt out. section3 (ResIST) or naive (every skippable block of every section;
    Fig. 6 ablation)."""
    scale_activations: bool = True
    """Scale partitioned residual branches by c when the whole network runs (§2.6)."""
    carry_momentum: bool = False
    """Carry SGD momentum across rounds (averaged with the blocks) instead of restarting it."""
    warmup_epochs: float = 0.0
    """ResIST only: epochs of local SGD on the whole (scaled) network before ResIST starts (§2.6)."""
    cooldown_epochs: float = 0.0
    """ResIST only: the last epochs of training run as local SGD on the whole network (the mirror of the
    warm-up; not in the paper). Rounds are whole, so it starts at the first round boundary within that
    many epochs of the end of the epoch schedule (``--max-rounds`` does not move it)."""
    cooldown_fold: bool = True
    """At the start of the cool-down, fold the evaluation scale c into the weights that end each
    partitioned residual branch (c f(x) = f'(x) exactly), so that the branches train at scale 1 as they
    did in their sub-networks; off, or where a model's blocks do not name their branch outputs, the
    cool-down trains the branches scaled by c, as the warm-up does."""
    bn_eval: BNEvalMode = "average"
    """Evaluation BatchNorm: ``average`` (running stats averaged over holders), ``batch`` (test-batch
    statistics, as the paper's code), or ``recalibrate`` (re-estimated on training batches)."""
    recalib_batches: int = 20
    """Training batches used by ``bn_eval=recalibrate``."""
    outer_lr: float = 1.0
    """Outer learning rate (DiLoCo, Douillard et al. 2023): after a round's average, each parameter moves
    from its round-start value along the averaged change, times this. 1 with ``outer_momentum`` 0 is
    plain averaging (and is exactly it). DiLoCo uses 0.7."""
    outer_momentum: float = 0.0
    """Momentum of the outer SGD (DiLoCo: 0.9); it travels with a ResIST block to its next holders."""
    outer_nesterov: bool = True
    """Nesterov momentum for the outer SGD (DiLoCo's choice)."""
    outer_blocks: bool = True
    """ResIST with an outer step: whether its partitioned blocks take the step too (their outer momentum
    then travels with them to each next holder: a second copy of their parameters in every block
    message). Off: only the layers every sub-network shares are stepped, the blocks are plainly averaged
    and send ResIST's own bytes (ours; docs/outer.md)."""
    compress: Codec = "none"
    """Codec for the parameters sent at synchronization (paper Appendix A.5): fp16, bf16, q1..q8 (k-bit
    quantization), topk or randk; BatchNorm statistics, counters and momenta travel exactly. Data
    parallel sends its gradients through it at every step."""
    compress_what: CompressWhat = "weights"
    """What the codec compresses: weights (the paper: every parameter sent) or update (the change since
    the round began, for the layers every rank holds; blocks that change holders still travel as
    weights)."""
    error_feedback: bool = False
    """With compress_what=update: add what compression dropped to the next round's update (data parallel:
    to the next step's gradient)."""
    keep_fraction: float = 0.25
    """Fraction of values that topk / randk keep."""
    chunk: int = 256
    """Values per quantization scale and offset (q1..q8)."""
    balance: BalanceMode = "none"
    """ResIST for workers of different speeds (ours; docs/heterogeneous.md): each round's plan follows the
    workers' measured speeds: ``depth`` gives a slower worker fewer partitioned blocks, ``steps`` fewer
    local steps, ``depth+steps`` both (depth first); ``none`` deals equal shares (the paper)."""
    bn_sync_every: int = 1
    """Average BatchNorm statistics over their holders at the end of every this many rounds only (paper
    §5 on ImageNet: every 1300); in the other rounds each rank keeps its own, and a block that changes
    holders brings those of its lowest-ranked holder. 1: every round, with the parameters."""
    fragments: int = 1
    """Streaming DiLoCo: contiguous fragments of the model's parts (stem, blocks, head), each synchronized
    once per round on a staggered schedule (docs/streaming.md)."""
    sync_delay: int = 0
    """Streaming DiLoCo's tau: inner steps between a fragment's all-reduce starting and its merge into the
    live weights (below local_iters / fragments)."""
    mix_alpha: float = 0.0
    """Streaming DiLoCo's alpha: a merged fragment's live weights become (1 - alpha) x the new global
    weights + alpha x the live ones (in [0, 1)); with ``overlap``, the same for ResIST's shared layers."""
    overlap: int | None = None
    """ResIST's overlapped synchronization (docs/streaming.md): round r's transfers run behind the first
    TAU local steps of round r+1, whose incoming blocks join at step TAU, when the shared layers merge
    (0 <= TAU < local_iters; 0 with mix_alpha 0 is blocking ResIST bit for bit). None: blocking."""
    overlap_merge: str = "mix"
    """How overlapped ResIST's shared layers take the delayed average at step TAU: 'mix' (Streaming
    DiLoCo's, live <- global + mix_alpha (live - global): a share 1 - mix_alpha of the TAU steps taken
    meanwhile is dropped) or 'delta' (live <- global + (live - sent): the average plus this worker's own
    steps since it sent, none dropped; mix_alpha unused). docs/streaming.md."""
    prefetch: bool = False
    """With ``overlap`` TAU >= 1: send each block that changes holders min(TAU, H - TAU) steps before round
    r ends (its holders train on; H = local_iters), so that its round-r+1 holders train it from step 0
    instead of waiting until step TAU; the holders' last steps on it follow as a delta, added at step TAU
    (those blocks cross the link twice). docs/streaming.md, "Prefetched blocks"."""
    overlap_restart: bool = False
    """With ``overlap``: restart SGD's momentum at step TAU, when the merge lands, as blocking ResIST
    restarts it right after its average (§2.6); otherwise the momentum built over the first TAU steps,
    from gradients taken at this worker's unaveraged weights, carries on past the merge."""

    def __post_init__(self) -> None:
        _check(self.name in ALGORITHMS, f"unknown algorithm {self.name!r}{did_you_mean(self.name, ALGORITHMS)}; "
                                        f"choose one of: {', '.join(ALGORITHMS)}")
        _check_vocabularies(self)
        _check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        _check(self.local_iters >= 1, f"local_iters must be >= 1, got {self.local_iters}")
        _check(self.min_depth >= 0, f"min_depth must be >= 0, got {self.min_depth}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.cooldown_epochs >= 0, f"cooldown_epochs must be >= 0, got {self.cooldown_epochs}")
        _check(not (self.cooldown_epochs and self.cooldown_fold and self.error_feedback),
               "folding the scale into the weights at the cool-down would leave error-feedback residuals in the "
               "old units: add --no-cooldown-fold or drop --error-feedback")
        _check(self.recalib_batches >= 1, f"recalib_batches must be >= 1, got {self.recalib_batches}")
        _check(self.outer_lr > 0, f"outer_lr must be > 0, got {self.outer_lr}")
        _check(0 <= self.outer_momentum < 1, f"outer_momentum must be in [0, 1), got {self.outer_momentum}")
        _check(0 < self.keep_fraction <= 1, f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        _check(self.chunk >= 1, f"chunk must be >= 1, got {self.chunk}")
        _check(not self.error_feedback or self.compress_what == "update" or can(self.name, "syncs_every_step"),
               "error feedback corrects compressed updates: use --compress-what update")
        _check(not (self.error_feedback and self.compress == "randk"),
               "random-k scales what it keeps by 1 / keep_fraction, so what it drops can exceed what it was "
               "given and error feedback diverges; use --compress topk with --error-feedback, or drop it")
        _check(self.compress != "none" or (self.compress_what == "weights" and not self.error_feedback),
               "--compress-what / --error-feedback need a codec: add --compress")
        _check(self.bn_sync_every >= 1, f"bn_sync_every must be >= 1, got {self.bn_sync_every}")
        _check(self.fragments >= 1, f"fragments must be >= 1, got {self.fragments}")
        _check(self.sync_delay >= 0, f"sync_delay must be >= 0, got {self.sync_delay}")
        _check(0 <= self.mix_alpha < 1, f"mix_alpha must be in [0, 1), got {self.mix_alpha}")
        _check(self.overlap is None or self.overlap >= 0, f"overlap must be >= 0, got {self.overlap}")
        _check(self.overlap_merge in ("mix", "delta"),
               f"overlap_merge must be 'mix' or 'delta', got {self.overlap_merge!r}")
        _check(self.overlap is not None or self.overlap_merge == "mix",
               "--overlap-merge says how overlapped merges land: add --overlap TAU, or drop --overlap-merge")
        _check(self.overlap_merge == "mix" or self.mix_alpha == 0,
               "--mix-alpha weighs 'mix' merges; --overlap-merge delta keeps every local step: drop --mix-alpha")
        _check(not self.overlap_restart or self.overlap is not None,
               "--overlap-restart restarts momentum at an overlapped merge: add --overlap TAU, or drop it")
        _check(not self.prefetch or self.overlap is not None,
               "--prefetch sends blocks before an overlapped round ends: add --overlap TAU, or drop --prefetch")
        self._check_capabilities()
        if self.overlap is not None:
            self._check_overlap()

    def _check_capabilities(self) -> None:
        """What is asked of the algorithm is something it can do (its class's capability attributes,
        ``resist.registry.capabilities``)."""
        name, has = self.name, functools.partial(can, self.name)
        _check(self.warmup_epochs == 0 or has("uses_warmup"),
               f"warmup_epochs is ResIST's local-SGD warm-up; {name} has none: drop --warmup-epochs")
        _check(self.cooldown_epochs == 0 or has("uses_warmup"),
               f"cooldown_epochs is ResIST's local-SGD cool-down; {name} has none: drop --cooldown-epochs")
        _check(self.outer_blocks or (self.outer and has("partitions")),
               "--no-outer-blocks keeps ResIST's partitioned blocks out of the outer step: it needs an outer step "
               "(--outer-lr / --outer-momentum) and --algo resist")
        _check(not self.outer or has("supports_outer"),
               f"an outer optimizer steps the average of a round; {name} has none: use "
               f"{' or '.join(algorithms_that('supports_outer'))}, or drop --outer-lr / --outer-momentum")
        _check(not has("syncs_every_step") or self.compress_what == "weights",
               "data parallel compresses its gradients: drop --compress-what")
        _check(self.compress == "none" or has("compressible"),
               f"compression is implemented for {', '.join(algorithms_that('compressible'))}, not {name}; "
               f"drop --compress")
        _check(self.balance == "none" or has("balances"),
               f"--balance sizes ResIST's sub-networks to its workers' speeds; {name} has none: drop --balance")
        _check(self.bn_sync_every == 1 or has("defers_bn_sync"),
               f"{name} has no round average to defer BatchNorm statistics from; drop --bn-sync-every "
               f"(it applies to {', '.join(algorithms_that('defers_bn_sync'))})")
        _check(not (has("overlaps") and self.mix_alpha and self.overlap is None),
               f"--mix-alpha mixes {name}'s overlapped merges: add --overlap TAU, or drop --mix-alpha")
        fragmented = has("fragmented")
        mixes = self.overlap is not None and has("overlaps")  # ResIST's overlap mixes its merges too
        _check(fragmented or ((self.fragments, self.sync_delay) == (1, 0) and (self.mix_alpha == 0 or mixes)),
               f"--fragments / --sync-delay / --mix-alpha are Streaming DiLoCo's; {name} has no fragments: "
               f"drop them or use --algo {' or '.join(algorithms_that('fragmented'))}")
        _check(not fragmented or self.local_iters % self.fragments == 0,
               f"local_iters {self.local_iters} must be a multiple of fragments {self.fragments} (one fragment "
               f"is sent every local_iters / fragments steps)")
        _check(not fragmented or self.sync_delay < max(1, self.local_iters // self.fragments),
               f"sync_delay {self.sync_delay} must be below local_iters / fragments = "
               f"{self.local_iters // self.fragments} (a fragment merges before the next one is sent)")

    def _check_overlap(self) -> None:
        """--overlap TAU: ResIST's plain rounds only (docs/streaming.md); the rest is refused, not ignored."""
        name, tau = self.name, self.overlap
        _check(can(name, "overlaps"), f"--overlap hides ResIST's transfers behind the next round; {name} has none: "
                                      f"drop --overlap or use --algo {' or '.join(algorithms_that('overlaps'))}")
        _check(tau < self.local_iters, f"overlap {tau} must be below local_iters {self.local_iters} (the "
                                       f"transfers land within the next round)")
        _check(not self.prefetch or tau >= 1, "--prefetch sends blocks tau steps ahead: it needs --overlap 1 or more")
        _check(self.compress_what == "weights", "--compress-what update sends what changed since a round began, "
               "which overlapped workers do not share (their merge is tau steps in): use --compress-what weights")
        _check(not (self.overlap_restart and self.carry_momentum),
               "--overlap-restart restarts the momentum that --carry-momentum carries: drop one of them")
        _check(not (self.prefetch and self.compress != "none"),
               "--prefetch sends blocks as an early copy plus a delta, which a codec would compress apart: "
               "drop --compress or --prefetch")
        extras = [flag for flag, on in (("--outer-lr/--outer-momentum", self.outer),
                                        ("--balance", self.balance != "none"),
                                        ("--bn-sync-every", self.bn_sync_every != 1),
                                        ("--warmup-epochs", self.warmup_epochs > 0),
                                        ("--cooldown-epochs", self.cooldown_epochs > 0)) if on]
        _check(not extras, f"{extras[0] if extras else ''} does not go with --overlap (it overlaps plain ResIST "
                           f"rounds); drop one of them")

    def syncs_bn(self, round_: int) -> bool:
        """Whether BatchNorm statistics are averaged at the end of ``round_`` (a pure function of the
        round, so that a resumed run averages them at the same rounds)."""
        return (round_ + 1) % self.bn_sync_every == 0

    @property
    def outer(self) -> bool:
        """Whether an outer optimizer runs (anything but plain averaging)."""
        return self.outer_lr != 1.0 or self.outer_momentum != 0.0


@dataclass
class OptimConfig:
    epochs: float = 160.0
    """Training length in epochs (``epoch_unit`` says what one is; paper: 160 on CIFAR at 4 and 8 workers,
    80 at 2)."""
    epoch_unit: EpochUnit = "shard"
    """What one epoch is for each worker. shard: one pass over its 1/S of the training set, n / (S B)
    steps (the data-parallel convention: S workers together pass over the data once). dataset: n / B
    steps, one pass's worth over the whole set for every worker, as in the authors' code, where each
    worker iterates the whole training set every epoch; shards are re-dealt every n / (S B) steps, so a
    worker still sees about the whole set. The paper's E epochs at S workers are E x S shard epochs."""
    lr: float = 0.1
    """Initial learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    lr_decay_at: tuple[float, ...] = (0.5, 0.75)
    """Fractions of training at which the learning rate is divided by 10 (the step schedule)."""
    inner: InnerOptimizer = "sgd"
    """The workers' (inner) optimizer: ``sgd`` (with ``momentum``) or ``adamw`` (default betas). Like
    momentum, AdamW's moments restart every round unless ``carry_momentum`` (not available for AdamW)."""
    lr_schedule: LRSchedule = "step"
    """Learning-rate schedule after the warm-up: ``step`` (divided by 10 at each ``lr_decay_at``, paper §5)
    or ``cosine`` (half a cosine from lr down to 0 at the last step; Loshchilov & Hutter 2017, as ViTs
    are trained)."""
    lr_warmup_epochs: float = 0.0
    """Epochs over which the learning rate first rises linearly to lr (Goyal et al. 2017; ViT and DeiT
    warm up), before the schedule; 0: none."""

    def __post_init__(self) -> None:
        self.lr_decay_at = tuple(self.lr_decay_at)
        _check_vocabularies(self)
        _check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        _check(0 < self.lr <= FLOAT32_MAX, f"lr must be > 0 and at most {FLOAT32_MAX:.4g} (float32's largest, which "
               f"the weights are updated in), got {self.lr}")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(all(0 < f < 1 for f in self.lr_decay_at), f"lr_decay_at must lie in (0, 1), got {self.lr_decay_at}")
        _check(0 <= self.lr_warmup_epochs < self.epochs,
               f"lr_warmup_epochs must be >= 0 and below epochs ({self.epochs}), got {self.lr_warmup_epochs}")


@dataclass
class RunConfig:
    seed: int = 0
    """Seeds the model initialization, the data order, the augmentation and every plan."""
    max_rounds: int | None = None
    """Stop after this many rounds (``None``: run all epochs)."""
    stop_at: float | None = None
    """Stop after the first evaluation whose headline score is at least this good (test accuracy in %;
    bits per byte or detection test loss, lower being better): time to a target without training past
    it. Checkpointed there; a resume with the same target leaves the run as it is."""
    eval_every: int = 10
    """Evaluate the assembled global model every this many rounds (and at the end)."""
    runtime: Runtime = "inprocess"
    """Where the workers run. inprocess (simulated as threads of one process), dist (torch.distributed), or
    elastic (processes that may die and join while the run goes on, on torchft; docs/elastic.md)."""
    lighthouse: str | None = None
    """Elastic: the address of a running ``resist lighthouse`` (host:port) to join as one worker;
    ``None``: start one here with ``--workers`` worker processes."""
    worker_id: str | None = None
    """Elastic: this worker's name, unique in the run (a restarted worker may take its old name)."""
    min_workers: int = 1
    """Elastic: the fewest workers the run goes on with (a local run's lighthouse; ``resist lighthouse
    --min-workers`` sets it for a shared one)."""
    backend: Backend | None = None
    """The torch.distributed backend; ``None`` picks nccl when CUDA is available, else gloo."""
    device: Device = "cpu"
    """The device that computes (auto: CUDA when available)."""
    timeout: float = 600.0
    """Seconds a collective may wait for a peer before the run fails naming it."""
    master_port: int | None = None
    """Rendezvous port of ``--runtime dist`` (``None``: one the OS picks; torchrun sets its own)."""
    out: str = "runs/latest"
    """Run folder (config.json, metrics.jsonl, summary.json, model.pt, checkpoints/); the default makes a
    new runs/PRESET-TIME for each run, linked as runs/latest. A folder that holds another run is refused
    (see ``resist train --force``)."""
    checkpoint_every: int | None = None
    """Write a checkpoint every this many rounds (and at the end); ``None``: at every evaluation."""
    keep_checkpoints: int = 2
    """How many of the latest checkpoints to keep."""
    amp: AmpMode = "none"
    """Mixed precision of the forward and backward pass: none, bf16 or fp16 (autocast; fp16 with a
    gradient scaler that restarts with every round, as momentum does). Master weights, optimizer state,
    averages and everything sent stay fp32; evaluation runs in fp32."""
    channels_last: bool = False
    """Feed images in channels-last memory format, so that convolutions run channels-last; the weights
    stay in their flat fp32 buffers."""
    log: str = "jsonl"
    """Where each round's scalars go, comma-separated: jsonl (metrics.jsonl, always written: the source of
    truth) and tensorboard (also TensorBoard event files beside it, with the optional tensorboard package:
    ``pip install 'resist[tensorboard]'``)."""

    def __post_init__(self) -> None:
        _check_vocabularies(self)
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(self.stop_at is None or math.isfinite(self.stop_at), f"stop_at must be a finite score, got {self.stop_at}")
        _check(self.max_rounds is None or self.max_rounds >= 1, f"max_rounds must be >= 1, got {self.max_rounds}")
        _check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        _check(0 < self.timeout <= MAX_TIMEOUT_S, f"timeout must be > 0 and at most {MAX_TIMEOUT_S:.0f} seconds "
               f"(30 days), got {self.timeout}")
        _check(self.master_port is None or 0 < self.master_port < 65536,
               f"master_port must be a TCP port (1-65535), got {self.master_port}")
        _check(self.checkpoint_every is None or self.checkpoint_every >= 1,
               f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        _check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check(self.min_workers >= 1, f"min_workers must be >= 1, got {self.min_workers}")
        _check(self.worker_id is None or (self.worker_id and self.worker_id.replace("-", "").replace("_", "")
                                          .replace(".", "").isalnum()),
               f"worker_id must be letters, digits, '-', '_' or '.', got {self.worker_id!r}")
        _check(self.runtime == "elastic" or (self.lighthouse is None and self.worker_id is None),
               "--lighthouse and --worker-id are for elastic training: add --elastic (or --runtime elastic)")
        _check(self.lighthouse is None or self.worker_id is not None,
               "a worker that joins a lighthouse needs a name: add --worker-id NAME (unique in the run)")
        for name in self.loggers:
            _check(name in LOGGERS, f"unknown log {name!r}{did_you_mean(name, LOGGERS)}; choose from: "
                   f"{', '.join(LOGGERS)}, comma-separated (e.g. --log jsonl,tensorboard)")

    @property
    def loggers(self) -> tuple[str, ...]:
        """The names in ``log`` (metrics.jsonl is written whatever they are)."""
        return tuple(n.strip() for n in str(self.log).split(","))


@dataclass
class Config:
    """A whole training job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(self.algo.warmup_epochs + self.algo.cooldown_epochs < self.optim.epochs,
               f"warm-up ({self.algo.warmup_epochs:g}) plus cool-down ({self.algo.cooldown_epochs:g}) epochs leave no "
               f"ResIST in {self.optim.epochs:g} epochs: shorten them or raise --epochs")
        _check(self.optim.inner == "sgd" or not (self.algo.carry_momentum or can(self.algo.name, "syncs_every_step")),
               "the adamw inner optimizer restarts with every round; it cannot carry its state "
               f"(--carry-momentum, {', '.join(algorithms_that('syncs_every_step'))}): use --inner-optim sgd")
        task = self.data.task
        lm = task == "lm"
        _check(model_task(self.model.name) == task,
               f"model {self.model.name} does not fit task {task}: language modelling takes "
               f"{', '.join(models_for('lm'))}, detection one of {', '.join(models_for('detection'))}, "
               f"classification an image model")
        _check(not lm or self.model.layers is None,
               f"--layers shapes ResNets; {self.model.name} has its own depth: drop --layers")
        _check(task == "classification" or not can(self.algo.name, "classification_only"),
               f"shallow ensembles are for classification (their members' class scores are averaged); --task {task} "
               f"trains with --algo {_either(n for n in ALGORITHMS if not can(n, 'classification_only'))}")
        _check(not lm or not self.run.channels_last, "channels-last is an image layout; drop --channels-last for --task lm")
        if self.run.runtime == "elastic":
            self._check_elastic()

    def _check_elastic(self) -> None:
        """Elastic training covers plain ResIST and local SGD on in-memory image classification (what its
        recovery rule and data rule are written for, docs/elastic.md); the rest is refused, not ignored."""
        a, name = self.algo, self.algo.name
        _check(can(name, "elastic"), f"elastic training is implemented for {', '.join(algorithms_that('elastic'))}, "
                                     f"not {name}; use one of them or another --runtime")
        extras = [flag for flag, on in (("--compress", a.compress != "none"), ("--outer-lr/--outer-momentum", a.outer),
                                        ("--overlap", a.overlap is not None),
                                        ("--balance", a.balance != "none"), ("--bn-sync-every", a.bn_sync_every != 1),
                                        ("--warmup-epochs", a.warmup_epochs > 0), ("--cooldown-epochs", a.cooldown_epochs > 0),
                                        ("--epoch-unit dataset", self.optim.epoch_unit != "shard"),
                                        ("--stop-at", self.run.stop_at is not None)) if on]
        _check(not extras, f"{extras[0] if extras else ''} does not go with elastic training (its recovery rule "
                           f"covers plain rounds); drop it or use --runtime inprocess/dist")
        _check(self.data.task == "classification" and self.data.dataset in ("cifar10", "cifar100", "digits", "synthetic"),
               f"elastic training reads in-memory images (cifar10, cifar100, digits, synthetic); {self.data.dataset} is not one")
        _check(self.run.min_workers <= a.workers, f"min_workers {self.run.min_workers} is above --workers {a.workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        _check(not unknown, f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory  # type: ignore[misc]
            values = d.get(f.name, {})
            known = {g.name for g in dataclasses.fields(sub_cls)}
            bad = set(values) - known
            _check(not bad, f"unknown field(s) in config section {f.name!r}: {', '.join(sorted(bad))}")
            kwargs[f.name] = sub_cls(**values)
        return cls(**kwargs)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``section.field`` overrides, e.g. ``replace(**{"algo.workers": 8})``; validated."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            _check(section in d and name in d[section], f"unknown config field {key!r}")
            d[section][name] = value
        return Config.from_dict(d)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: What may differ between a run and its resumption: where and how it runs, not what it computes.
RESUMABLE_CHANGES = frozenset({
    "algo.workers", "run.runtime", "run.backend", "run.device", "run.timeout", "run.max_rounds", "run.master_port",
    "run.eval_every", "run.checkpoint_every", "run.keep_checkpoints", "run.out", "run.amp", "run.channels_last",
    "run.log", "run.stop_at", "data.loader_workers",
})


@functools.lru_cache(maxsize=None)
def field_docs() -> dict[str, str]:
    """``section.field`` -> the docstring written under that field in this module (read from the source,
    so that the CLI's help and the docs say what the config says)."""
    tree = ast.parse(inspect.getsource(sys.modules[__name__]))
    sections = {f.default_factory.__name__: f.name for f in dataclasses.fields(Config)}  # type: ignore[union-attr]
    docs = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in sections):
        for node, after in zip(cls.body, cls.body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[f"{sections[cls.name]}.{node.target.id}"] = " ".join(after.value.value.split())
    return docs


def differences(a: Config, b: Config) -> list[str]:
    """``section.field`` names whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{sec}.{k}" for sec in da for k in da[sec] if da[sec][k] != db[sec][k]]
