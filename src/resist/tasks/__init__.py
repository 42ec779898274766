"""Tasks: what a run learns, apart from how it is distributed.

A task gives the trainer the loss of a batch, the evaluator of a model (``resist.algorithms.base.
Evaluator``), the score a run is selected on and which way is better, and the fields an evaluation adds
to metrics.jsonl and summary.json. Algorithms, runtimes, checkpoints and byte accounting never see it.
A task also loads its data (the dataset ``cfg.data`` names, with the options that kind of dataset takes),
says what the model needs to know of it (a language model's context), how a batch's inputs go to the
device and what else the run folder keeps of the data; the trainer reads the dataset only through its
``train_stream`` / ``eval_sets`` (``resist.data.base.DataSource``).

* ``classification``: cross-entropy; top-1 and top-5 on the test set and any extra test sets; the best
  top-1 is kept (``test_acc``, ``best_acc``).
* ``lm``: next-byte cross-entropy over every position of a window; bits per byte on the test text; the
  lowest is kept (``test_bpb``, ``best_bpb``).
* ``detection`` (paper §5, Table 6; the pieces in ``resist.tasks.detection``): the YOLOv2 loss with the
  model's anchors; the test loss and VOC mAP@0.5 on the test images; the lowest test loss is kept
  (``test_loss``, ``best_loss``), as the paper reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..config import DataConfig
    from ..data.base import DataSource


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[torch.Tensor, Any], torch.Tensor]
    """The training loss of a model's output on a batch's targets."""
    evaluator: Callable[..., Any]
    """(sets, recal, bn_eval, device) -> an Evaluator; ``sets``: name -> batches, the test set first."""
    headline: str
    """The score a run is selected on (a key of the evaluator's scores)."""
    higher_is_better: bool
    record: Callable[[dict[str, float], float], dict[str, Any]]
    """An evaluation's fields in a metrics.jsonl row, given the scores and the best headline so far."""
    summary: Callable[[list[dict[str, Any]]], dict[str, Any]]
    """Fields for summary.json from the rows."""
    describe: Callable[[dict[str, Any]], str]
    """An evaluated metrics row in words, for the log."""
    headline_words: Callable[[dict[str, Any]], str]
    """The run's best score in words, from summary.json (the CLI's last line)."""
    load: Callable[["DataConfig", bool], "DataSource"]
    """(data config, download) -> the dataset it names, with the options that kind of dataset takes."""
    model_options: Callable[["DataConfig"], dict[str, Any]] = lambda d: {}
    """Keywords the model factory takes from the data config (a language model's context)."""
    images: bool = True
    """Whether a batch's inputs are (B, C, H, W) images, which take the configured memory layout."""
    run_files: Callable[["DataSource"], dict[str, Any]] = lambda dataset: {}
    """File name -> JSON the run folder keeps about the data (which text files were trained on)."""

    def better(self, score: float, best: float | None) -> bool:
        return best is None or (score > best if self.higher_is_better else score < best)

    @property
    def worst(self) -> float:
        """Where "best so far" starts."""
        return -1.0 if self.higher_is_better else math.inf

    def inputs(self, x: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
        """A batch's inputs on ``device``; images in ``layout`` (``run.channels_last``)."""
        x = x.to(device, non_blocking=True)
        return x.contiguous(memory_format=layout) if self.images else x


# ------------------------------------------------------------------------------------ classification
def classification_record(scores: dict[str, float], best: float) -> dict[str, Any]:
    """One evaluation in a metrics.jsonl row: test top-1 (``test_acc``, and the best so far) and top-5,
    and each extra test set's under ``extra_test``."""
    record: dict[str, Any] = {"test_acc": scores["test/top1"], "test_top5": scores["test/top5"], "best_acc": best}
    extra = [k.split("/")[0] for k in scores if k.endswith("/top1") and k != "test/top1"]  # in the evaluator's order
    if extra:
        record["extra_test"] = {s: {"acc": scores[f"{s}/top1"], "top5": scores[f"{s}/top5"]} for s in extra}
    return record


def classification_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-5 and the extra test sets for summary.json, from the evaluated rows: final, best, and at the
    evaluation where test top-1 was best (what a model selected on the test set scores elsewhere)."""
    evaluated = [r for r in rows if r.get("test_acc") is not None]
    best = {"best_acc": max((r["test_acc"] for r in evaluated), default=-1.0),
            "final_acc": rows[-1].get("test_acc") if rows else None}
    if not evaluated or "test_top5" not in evaluated[-1]:  # no evaluation, or rows of an older run
        return best
    at_best = max(evaluated, key=lambda r: r["test_acc"])  # the first of equals, as best_acc is kept
    summary: dict[str, Any] = {**best, "final_top5": evaluated[-1]["test_top5"],
                               "best_top5": max(r["test_top5"] for r in evaluated),
                               "top5_at_best": at_best["test_top5"]}
    if "extra_test" in evaluated[-1]:
        summary["extra_test"] = {
            s: {"final_acc": v["acc"], "final_top5": v["top5"], "best_acc": max(r["extra_test"][s]["acc"] for r in evaluated),
                "acc_at_best": at_best["extra_test"][s]["acc"], "top5_at_best": at_best["extra_test"][s]["top5"]}
            for s, v in evaluated[-1]["extra_test"].items()}
    return summary


def classification_words(record: dict[str, Any]) -> str:
    extra = "".join(f"  {name} {v['acc']:6.2f}%" for name, v in record.get("extra_test", {}).items())
    return (f"test {record['test_acc']:6.2f}% (top-5 {record['test_top5']:6.2f}%)  best {record['best_acc']:6.2f}%"
            f"{extra}")


def load_images(d: "DataConfig", download: bool = False) -> "DataSource":
    """In-memory image arrays (CIFAR, digits, synthetic; CIFAR optionally downloaded), or a class-per-folder
    tree scanned, not decoded, with any extra test sets."""
    from ..data import load_dataset
    from ..registry import FOLDER_DATASETS

    if d.dataset in FOLDER_DATASETS:
        return load_dataset(d.dataset, d.data_dir, crop_size=d.crop_size, extra_test=d.extra_tests)
    return load_dataset(d.dataset, d.data_dir, download=download)


def classification(model: nn.Module | None = None) -> Task:
    """``model``: unused (every task factory takes the model being trained; detection's loss needs it)."""
    from .classification import Accuracy

    def evaluator(sets, recal, bn_eval, device):
        sets = dict(sets)
        return Accuracy(sets.pop("test"), recal, bn_eval, device, extra=sets)

    return Task("classification", F.cross_entropy, evaluator, "test/top1", True, classification_record,
                classification_summary, classification_words,
                lambda s: f"best test accuracy {s['best_acc']:.2f}%", load=load_images)


# ------------------------------------------------------------------------------------ language modelling
def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position: (B, T, V) logits, (B, T) targets."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class BitsPerByte:
    """Test loss of a byte-level language model: mean next-byte cross-entropy over every position of
    the test windows, in nats (``test/loss``) and in bits per byte (``test/bpb`` = nats / ln 2)."""

    names = ("test/loss", "test/bpb")

    def __init__(self, test: Callable[[], Iterable], device: torch.device) -> None:
        self.test, self.device = test, device

    @torch.no_grad()
    def predict(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        model.eval()
        logits, targets = [], []
        for x, y in self.test():
            logits.append(model(x.to(self.device)).float().cpu())
            targets.append(y)
        return {"test": (torch.cat(logits), torch.cat(targets))}

    def score(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        logits, targets = outputs["test"]
        nats = next_token_loss(logits, targets).item()
        return {"test/loss": nats, "test/bpb": nats / math.log(2)}

    @torch.no_grad()
    def metric(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        total, count = 0.0, 0
        for x, y in self.test():
            logits = model(x.to(self.device)).float()
            total += F.cross_entropy(logits.flatten(0, 1), y.to(self.device).flatten(), reduction="sum").item()
            count += y.numel()
        return {"test/loss": total / count, "test/bpb": total / count / math.log(2)}


def lm_record(scores: dict[str, float], best: float) -> dict[str, Any]:
    return {"test_loss": scores["test/loss"], "test_bpb": scores["test/bpb"], "best_bpb": best}


def lm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in rows if r.get("test_bpb") is not None]
    if not evaluated:
        return {}
    return {"final_bpb": evaluated[-1]["test_bpb"], "best_bpb": min(r["test_bpb"] for r in evaluated),
            "final_test_loss": evaluated[-1]["test_loss"]}


def load_text(d: "DataConfig", download: bool = False) -> "DataSource":
    """Bytes of text cut into windows of ``d.context`` (``download``: unused, text is never downloaded)."""
    from ..data import load_dataset

    return load_dataset(d.dataset, d.data_dir, context=d.context, max_bytes=d.text_bytes)


def language_model(model: nn.Module | None = None) -> Task:
    """``model``: unused, as for :func:`classification`."""
    return Task("lm", next_token_loss, lambda sets, recal, bn_eval, device: BitsPerByte(sets["test"], device),
                "test/bpb", False, lm_record, lm_summary,
                lambda r: f"test {r['test_bpb']:.4f} bits/byte  best {r['best_bpb']:.4f}",
                lambda s: f"best {s['best_bpb']:.4f} bits per byte", load=load_text,
                model_options=lambda d: {"context": d.context}, images=False,
                run_files=lambda dataset: {"split.json": dataset.split_record()})


# ------------------------------------------------------------------------------------ detection
def detection_record(scores: dict[str, float], best: float) -> dict[str, Any]:
    return {"test_loss": scores["test/loss"], "map50": scores["test/map50"],
            "map50_voc07": scores["test/map50_voc07"], "best_loss": best}


def detection_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best test loss, and mAP@0.5 at the evaluation with the best test loss (what the paper's
    selection, Table 6, would keep) beside the best mAP seen."""
    evaluated = [r for r in rows if r.get("map50") is not None]
    if not evaluated:
        return {}
    at_best = min(evaluated, key=lambda r: r["test_loss"])  # the first of equals, as best_loss is kept
    return {"best_test_loss": at_best["test_loss"], "final_test_loss": evaluated[-1]["test_loss"],
            "map50_at_best": at_best["map50"], "map50_voc07_at_best": at_best["map50_voc07"],
            "final_map50": evaluated[-1]["map50"], "final_map50_voc07": evaluated[-1]["map50_voc07"],
            "best_map50": max(r["map50"] for r in evaluated)}


def load_voc(d: "DataConfig", download: bool = False) -> "DataSource":
    """Pascal VOC's train and test splits at ``d.input_size`` (``download``: unused)."""
    from ..data import load_dataset
    from ..data.voc import parse_splits

    return load_dataset(d.dataset, d.data_dir, size=d.input_size, train_splits=parse_splits(d.voc_train),
                        test_splits=parse_splits(d.voc_test), flip=d.flip)


def detection(model: nn.Module | None = None) -> Task:
    """The YOLOv2 loss with ``model``'s anchors and classes (without a model, those every registered
    ``yolo_*`` model has: YOLOv2's five VOC anchors, the 20 VOC classes); the test loss and mAP@0.5."""
    from .detection import VOC_ANCHORS, VOC_CLASSES, DetectionScores, YOLOv2Loss

    anchors = getattr(model, "anchors", VOC_ANCHORS)
    num_classes = getattr(model, "num_classes", len(VOC_CLASSES))
    loss = YOLOv2Loss(anchors)

    def evaluator(sets, recal, bn_eval, device):
        return DetectionScores(sets["test"], recal, bn_eval, device, loss, num_classes)

    return Task("detection", loss, evaluator, "test/loss", False, detection_record, detection_summary,
                lambda r: (f"test loss {r['test_loss']:.4f}  mAP@0.5 {r['map50']:5.2f}% (VOC07 {r['map50_voc07']:5.2f}%)"
                           f"  best loss {r['best_loss']:.4f}"),
                lambda s: f"best test loss {s['best_test_loss']:.4f} (mAP@0.5 {s['map50_at_best']:.2f}% there)",
                load=load_voc)


TASK_FACTORIES: dict[str, Callable[..., Task]] = {"classification": classification, "lm": language_model,
                                                  "detection": detection}


def make_task(name: str, model: nn.Module | None = None) -> Task:
    """The task ``name``; ``model``: the network being trained (detection's loss takes its anchors)."""
    return TASK_FACTORIES[name](model)
