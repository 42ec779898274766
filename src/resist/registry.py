"""Every vocabulary of the package in one place: config validation, the CLI's choices and help, and
the README's lists read these. A closed vocabulary is a ``typing.Literal`` type, which the config's
fields are annotated with (so the CLI finds a flag's choices in its field's type); the tuples beside
them are the same names, ``typing.get_args`` of the type. Algorithms are named here with where their
class lives, so that this module stays free of torch: adding an algorithm is one file in
``algorithms/`` and one line below; what it can do (:data:`CAPABILITIES`) is declared as class
attributes of its class and read from its source here, without importing torch."""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path
from typing import Literal, get_args

#: name -> "module:Class" of the algorithm, and one line on what it is.
ALGORITHMS: dict[str, tuple[str, str]] = {
    "resist": ("resist.algorithms.resist:ResIST", "independent sub-ResNets, averaged and repartitioned each round"),
    "local_sgd": ("resist.algorithms.local_sgd:LocalSGD", "whole model on every worker, averaged each round"),
    "data_parallel": ("resist.algorithms.data_parallel:DataParallel", "gradients averaged after every step"),
    "ensemble": ("resist.algorithms.ensemble:Ensemble", "the first round's sub-ResNets, never synchronized"),
    "streaming_diloco": ("resist.algorithms.streaming:StreamingDiLoCo",
                         "local SGD whose fragments sync staggered, each behind the next steps (Streaming DiLoCo)"),
}
Partition = Literal["section3", "naive"]
#: How ResIST's plan adapts to workers of different speeds (``--balance``; ``plan.make_balanced_plan``).
BalanceMode = Literal["none", "depth", "steps", "depth+steps"]
BNEvalMode = Literal["average", "batch", "recalibrate"]
Runtime = Literal["inprocess", "dist", "elastic"]
Backend = Literal["gloo", "nccl"]
Device = Literal["cpu", "cuda", "auto"]
#: In-memory datasets (CIFAR, digits, synthetic), class-per-folder image trees streamed from disk,
#: text for language modelling (the Python standard library's sources, or a folder of text files), and
#: Pascal VOC for detection.
Dataset = Literal["cifar10", "cifar100", "digits", "synthetic", "imagefolder", "pystdlib", "text", "voc"]
#: What a run learns (``resist.tasks``): image classes, the next byte of text, or objects' boxes and classes.
Task = Literal["classification", "lm", "detection"]
#: Stems: CIFAR's 3x3 stride-1 conv, or ImageNet's 7x7 stride-2 conv + 3x3 stride-2 max pool (ResNets);
#: 4-pixel patches of 32x32 images, or 16-pixel patches of 224x224 ones (ViTs).
Stem = Literal["cifar", "imagenet"]
InnerOptimizer = Literal["sgd", "adamw"]
LRSchedule = Literal["step", "cosine"]
EpochUnit = Literal["shard", "dataset"]
AmpMode = Literal["none", "bf16", "fp16"]
#: What may travel compressed (paper Appendix A.5): none, 16-bit floats, k-bit quantization, sparsification.
Codec = Literal["none", "fp16", "bf16", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "topk", "randk"]
CompressWhat = Literal["weights", "update"]
#: Where a run's per-round scalars go besides metrics.jsonl (always written, the source of truth).
Logger = Literal["jsonl", "tensorboard"]

PARTITIONS: tuple[str, ...] = get_args(Partition)
BALANCE_MODES: tuple[str, ...] = get_args(BalanceMode)
BN_EVAL_MODES: tuple[str, ...] = get_args(BNEvalMode)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
BACKENDS: tuple[str, ...] = get_args(Backend)
DEVICES: tuple[str, ...] = get_args(Device)
DATASETS: tuple[str, ...] = get_args(Dataset)
TASKS: tuple[str, ...] = get_args(Task)
STEMS: tuple[str, ...] = get_args(Stem)
INNER_OPTIMIZERS: tuple[str, ...] = get_args(InnerOptimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LRSchedule)
EPOCH_UNITS: tuple[str, ...] = get_args(EpochUnit)
AMP_MODES: tuple[str, ...] = get_args(AmpMode)
CODECS: tuple[str, ...] = get_args(Codec)
COMPRESS_WHAT: tuple[str, ...] = get_args(CompressWhat)
LOGGERS: tuple[str, ...] = get_args(Logger)
#: Codecs that keep a fraction of the values (``keep_fraction``).
SPARSE_CODECS = ("topk", "randk")
#: Datasets of bytes, for the language-modelling task.
TEXT_DATASETS = ("pystdlib", "text")
#: Datasets of images with boxes, for the detection task (a VOC devkit tree, ``tasks/detection/voc.py``).
DETECTION_DATASETS = ("voc",)
#: Datasets whose images are files on disk, decoded in loader processes (``data/folder.py``).
FOLDER_DATASETS = ("imagefolder",)

#: The task each registered model serves where it is not classification: every other registered model,
#: and a user's ``module:function`` one, classifies images. (``tests/unit/test_models.py`` checks that
#: each name here is registered.)
MODEL_TASKS: dict[str, str] = {
    "gpt_char": "lm",
    "yolo_resnet": "detection", "yolo_resnet101": "detection", "yolo_resnet152": "detection",
    "yolo_resnet200": "detection",
}


def model_task(name: str) -> str:
    """The task the model registered as ``name`` serves (``classification`` for any model not listed)."""
    return MODEL_TASKS.get(name, "classification")


def models_for(task: str) -> tuple[str, ...]:
    """The registered models that serve ``task`` (only those listed in :data:`MODEL_TASKS`)."""
    return tuple(name for name, t in MODEL_TASKS.items() if t == task)


#: What an algorithm can do, each a class attribute of its class, with the default on
#: ``algorithms/base.py``'s ``Algorithm``:
#:
#: - ``partitions``: deals the partitionable blocks out to sub-networks (``plan.make_plan``);
#: - ``uses_warmup``: can train whole-network rounds before and after (``warmup_epochs``,
#:   ``cooldown_epochs``; its constructor takes ``warmup_rounds`` and ``cooldown_from``);
#: - ``supports_outer``: its rounds end in an average of the parts, which an outer optimizer can step;
#: - ``compressible``: can send its synchronization compressed (``compress``);
#: - ``defers_bn_sync``: can average BatchNorm statistics less often than the parameters (``bn_sync_every``);
#: - ``balances``: its plan can follow the workers' measured speeds (``balance``);
#: - ``syncs_every_step``: averages gradients after every step, so it has no round to restart momentum at,
#:   compresses gradients rather than weights, and all-reduces once a step;
#: - ``classification_only``: its members' class scores are averaged at evaluation;
#: - ``fragmented``: synchronizes fragments of the model on a staggered schedule (``fragments``);
#: - ``checkpointable``: the run's whole state is the global model (so that a checkpoint can hold it);
#: - ``elastic``: can go on through lost and joining workers (``--runtime elastic``; it has
#:   ``reconfigure`` and ``join``);
#: - ``overlaps``: can run a round's synchronization behind the next round's first steps (``overlap``).
CAPABILITIES = ("partitions", "uses_warmup", "supports_outer", "compressible", "defers_bn_sync", "balances",
                "syncs_every_step", "classification_only", "fragmented", "checkpointable", "elastic", "overlaps")


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
        raise _unknown_algorithm(name)
    module, _, cls = ALGORITHMS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)


def _unknown_algorithm(name: object) -> ValueError:
    return ValueError(f"unknown algorithm {name!r}{did_you_mean(name, ALGORITHMS)}; "
                      f"choose one of: {', '.join(ALGORITHMS)}")


def _class_attributes(target: str) -> dict[str, object]:
    """The literal class attributes named in :data:`CAPABILITIES` of ``"module:Class"``, read from the
    module's source (found without importing it or its package)."""
    module, _, cls = target.partition(":")
    root, _, rest = module.partition(".")
    if root == __name__.partition(".")[0]:
        path = Path(__file__).parent.joinpath(*rest.split(".")).with_suffix(".py")
    else:
        import importlib.util

        path = Path(importlib.util.find_spec(module).origin)  # type: ignore[union-attr, arg-type]
    node = next((n for n in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        raise ValueError(f"{target}: no class {cls} in {path}")
    found: dict[str, object] = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            names, value = [stmt.target], stmt.value
        elif isinstance(stmt, ast.Assign):
            names, value = stmt.targets, stmt.value
        else:
            continue
        for t in names:
            if isinstance(t, ast.Name) and t.id in CAPABILITIES:
                try:
                    found[t.id] = ast.literal_eval(value)
                except ValueError:
                    raise ValueError(f"{target}.{t.id} must be a literal (it is read without importing the "
                                     f"class)") from None
    return found


def capabilities(name: str) -> dict[str, object]:
    """What algorithm ``name`` can do (:data:`CAPABILITIES`): its class's attributes over the defaults of
    ``Algorithm``, read from their source, so that config validation stays free of torch (and of an import
    cycle: the algorithms import the config)."""
    if name not in ALGORITHMS:
        raise _unknown_algorithm(name)
    return dict(_capabilities(ALGORITHMS[name][0]))


@functools.lru_cache(maxsize=None)
def _capabilities(target: str) -> dict[str, object]:
    caps = _class_attributes("resist.algorithms.base:Algorithm")
    missing = set(CAPABILITIES) - set(caps)
    assert not missing, f"Algorithm declares no default for {', '.join(sorted(missing))}"
    caps.update(_class_attributes(target))
    return caps


def can(name: object, capability: str) -> bool:
    """Whether algorithm ``name`` has ``capability``; an unknown name (an old run folder's) has none."""
    assert capability in CAPABILITIES, capability
    return isinstance(name, str) and name in ALGORITHMS and bool(_capabilities(ALGORITHMS[name][0])[capability])


def algorithms_that(capability: str) -> tuple[str, ...]:
    """The registered algorithms that have ``capability``, in registry order."""
    return tuple(name for name in ALGORITHMS if can(name, capability))
