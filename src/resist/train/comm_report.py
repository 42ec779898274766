"""Communication per round of ResIST and its baselines: the paper's convention and the real bytes.

``resist comm`` prints, per worker count S (paper §2.3, Table 1 and Fig. 4):

- the **paper convention**: 2 (send and receive) x 4 bytes x the parameters every worker holds, in
  decimal GB. Local SGD: every worker holds the whole model. ResIST: every worker is counted as
  holding the shared layers plus max(ceil(P/S), m) of the P partitionable blocks. Parameters only,
  no BatchNorm buffers, as the paper counts;
- the bytes the runtime **really moves** in one synchronization (paper §2.3, §2.5): S gloo processes build
  the ResIST and local SGD workers and synchronize a few rounds; the communicator counts every message
  (BatchNorm buffers included; an all-reduce counted as a ring, see :mod:`resist.comm.base`);
- **data parallel** (paper §2.4): every one of the ``local_iters`` steps all-reduces all gradients,
  counted by the same convention;
- **GPipe-style pipeline model parallel** (paper Fig. 4): the model cut into S contiguous stages of
  about equal parameter count; every step, each stage boundary carries the activation forward and its
  gradient back, 2 x 4 bytes x batch x activation size per sample.

Parameter counts and activation shapes come from models on the ``meta`` device: no memory is used.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch

from ..models import create_model

log = logging.getLogger("resist")

GB = 1e9
FLOAT_BYTES = 4
IMAGE_SIZE = 32  # CIFAR inputs, as in the paper's Table 1 and Fig. 4
# Paper Table 1 as published (paper ResNet101, CIFAR100, minimum depth 4); 0.454 is 0.45455 cut.
PAPER_TABLE1 = {"workers": [2, 4, 8], "local_sgd_gb": [0.662, 1.325, 2.649], "resist_gb": [0.454, 0.720, 1.289]}


def _meta_model(model_name: str, num_classes: int, width: float, layers: Sequence[int] | None = None):
    extra = {"layers": tuple(layers)} if layers is not None else {}
    try:
        with torch.device("meta"):
            return create_model(model_name, num_classes=num_classes, width=width, **extra)
    except TypeError as e:  # layers missing (generic factories) or given to a fixed-depth model
        hint = "needs" if layers is None else "takes no"
        raise ValueError(f"model {model_name!r} {hint} layers (--layers): {e}") from None


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_workers(workers: Sequence[int]) -> None:
    if not workers or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in workers):
        raise ValueError(f"workers must be integers >= 1, got {list(workers)}")


def param_counts(model_name: str, num_classes: int, width: float = 1.0,
                 layers: Sequence[int] | None = None) -> dict[str, int]:
    """Total, shared and per-block parameters and the number P of partitionable blocks (paper §2.1, §2.2)."""
    model = _meta_model(model_name, num_classes, width, layers)
    sizes = [_numel(model.blocks[b]) for b in model.partitionable]
    total = _numel(model)
    # Section-3 blocks after the first all have the same shape; max() is only a guard.
    return {"total": total, "shared": total - sum(sizes), "block": max(sizes, default=0),
            "partitionable_blocks": len(sizes)}


def paper_convention(model_name: str, num_classes: int, width: float, workers: Sequence[int],
                     min_depth: int = 0, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Bytes per round by the paper's convention (paper §2.3, Table 1), per worker count.

    Local SGD: 2 x 4 x S x all parameters. ResIST: 2 x 4 x S x (shared + k x block) with
    k = max(ceil(P/S), m) blocks per worker.
    """
    _check_workers(workers)
    counts = param_counts(model_name, num_classes, width, layers)
    p = counts["partitionable_blocks"]
    if not 0 <= min_depth <= p:
        raise ValueError(f"min depth must be in [0, {p}] (the partitionable blocks of {model_name}), got {min_depth}")
    rows = []
    for s in workers:
        k = max(math.ceil(p / s), min_depth)
        rows.append({"workers": s, "blocks_per_worker": k,
                     "local_sgd_bytes": 2 * FLOAT_BYTES * s * counts["total"],
                     "resist_bytes": 2 * FLOAT_BYTES * s * (counts["shared"] + k * counts["block"])})
    return {"params": counts, "rows": rows}


def _measure_rank(comm, model_name: str, num_classes: int, width: float, layers, min_depth: int,
                  rounds: int, compress: str = "none") -> dict[str, list[tuple[int, int]]]:
    """One rank of :func:`measure`: (sent, received) ``sync`` bytes of each round, per algorithm."""
    from ..presets import preset
    from .build import build_algorithm

    out = {}
    for algo in ("resist", "local_sgd"):
        cfg = preset("cifar10_resnet101_paper").replace(**{
            "algo.name": algo, "algo.workers": comm.world_size, "algo.min_depth": min_depth,
            "model.name": model_name, "model.width": width, "model.num_classes": num_classes,
            "model.layers": layers, "algo.compress": compress})
        worker = build_algorithm(comm, cfg, num_classes, torch.device("cpu"), 1)
        worker.start(0)
        per_round = []
        for r in range(rounds):
            sent, received = comm.bytes.sent["sync"], comm.bytes.received["sync"]
            worker.begin_round(r)  # no training steps: they do not change what a round sends
            worker.end_round(r)
            per_round.append((comm.bytes.sent["sync"] - sent, comm.bytes.received["sync"] - received))
        out[algo] = per_round
        del worker
    return out


def measure(model_name: str, num_classes: int, width: float, workers: Sequence[int], min_depth: int = 0,
            rounds: int = 3, layers: Sequence[int] | None = None, timeout: float = 600.0,
            compress: str = "none") -> dict[str, Any]:
    """Bytes the runtime moves per synchronization, counted at the communicator on S real gloo
    processes (paper §2.3, §2.5), for ResIST and local SGD.

    Per worker count and algorithm: ``sent`` / ``received`` [rank][round] in bytes, ``per_round`` (the
    total over ranks of sent + received) and ``mean_bytes`` (its mean over the rounds).
    """
    from ..comm.launch import spawn

    _check_workers(workers)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    layers = tuple(layers) if layers is not None else None
    rows = []
    for s in workers:
        log.info("measuring %s on %d gloo process%s, %d rounds ...", model_name, s, "es" * (s > 1), rounds)
        ranks = spawn(s, _measure_rank, (model_name, num_classes, width, layers, min_depth, rounds, compress),
                      backend="gloo", timeout=timeout)
        row: dict[str, Any] = {"workers": s}
        for algo in ("resist", "local_sgd"):
            sent = [[r[0] for r in rank[algo]] for rank in ranks]
            received = [[r[1] for r in rank[algo]] for rank in ranks]
            per_round = [sum(sent[i][r] + received[i][r] for i in range(s)) for r in range(rounds)]
            row[algo] = {"sent": sent, "received": received, "per_round": per_round,
                         "mean_bytes": sum(per_round) / rounds}
        rows.append(row)
    return {"rounds": rounds, "rows": rows}


def pipeline_bytes(model_name: str, num_classes: int, width: float, stages: int, batch: int = 128,
                   local_iters: int = 50, layers: Sequence[int] | None = None) -> dict[str, Any]:
    """GPipe-style pipeline model parallelism (paper Fig. 4): bytes per round of ``local_iters`` steps.

    The sequence stem, blocks..., head is cut into ``stages`` contiguous stages of about equal
    parameter count (each cut at the unit boundary nearest to k/S of the parameters). Each step, every
    cut carries the activation forward and its gradient back: 2 x 4 bytes x batch x numel per sample.
    """
    if stages < 1 or batch < 1 or local_iters < 1:
        raise ValueError(f"stages, batch and local_iters must be >= 1, got {stages}, {batch}, {local_iters}")
    model = _meta_model(model_name, num_classes, width, layers)
    units = [model.stem, *model.blocks, model.head]
    if stages > len(units):
        raise ValueError(f"{model_name} has {len(units)} layers to pipeline, fewer than {stages} stages")
    shapes: list[int] = []
    hooks = [u.register_forward_hook(lambda m, i, o: shapes.append(o[0].numel())) for u in units]
    with torch.no_grad():
        model(torch.empty(1, 3, IMAGE_SIZE, IMAGE_SIZE, device="meta"))
    for h in hooks:
        h.remove()
    cum = [0]
    for u in units:
        cum.append(cum[-1] + _numel(u))
    cuts: list[int] = []  # cut i: between units[i-1] and units[i]
    for k in range(1, stages):
        allowed = range((cuts[-1] if cuts else 0) + 1, len(units) - (stages - k) + 1)
        cuts.append(min(allowed, key=lambda i: abs(cum[i] - k * cum[-1] / stages)))
    numel = [shapes[i - 1] for i in cuts]
    per_step = 2 * FLOAT_BYTES * batch * sum(numel)
    return {"stages": stages, "cuts": cuts, "boundary_numel": numel,
            "stage_params": [cum[b] - cum[a] for a, b in zip([0, *cuts], [*cuts, len(units)])],
            "bytes_per_step": per_step, "bytes": per_step * local_iters}


def report(model_name: str, num_classes: int, width: float, workers: Sequence[int], min_depth: int = 0,
           rounds: int = 3, batch: int = 128, local_iters: int = 50, measured: bool = True,
           layers: Sequence[int] | None = None, compress: str = "none") -> dict[str, Any]:
    """Everything ``resist comm`` prints, as one JSON-ready dict (bytes are exact integers). With a codec
    (``compress``) the measured bytes are those of compressed synchronizations; the convention columns
    stay the paper's uncompressed ones, so the measured ratio shows what the codec saves."""
    from ..registry import CODECS

    if compress not in CODECS:
        raise ValueError(f"unknown codec {compress!r}; choose one of: {', '.join(CODECS)}")
    if batch < 1 or local_iters < 1 or rounds < 1:
        raise ValueError(f"batch, local iters and rounds must be >= 1, got {batch}, {local_iters}, {rounds}")
    conv = paper_convention(model_name, num_classes, width, workers, min_depth, layers)
    meas = measure(model_name, num_classes, width, workers, min_depth, rounds, layers, compress=compress) \
        if measured else None
    rows = []
    for i, c in enumerate(conv["rows"]):
        s = c["workers"]
        row = {"workers": s, "blocks_per_worker": c["blocks_per_worker"],
               "local_sgd": {"convention_bytes": c["local_sgd_bytes"]},
               "resist": {"convention_bytes": c["resist_bytes"]},
               "data_parallel": {"convention_bytes": 2 * FLOAT_BYTES * s * conv["params"]["total"] * local_iters},
               "pipeline": pipeline_bytes(model_name, num_classes, width, s, batch, local_iters, layers)}
        if meas is not None:
            for algo in ("local_sgd", "resist"):
                m = meas["rows"][i][algo]
                row[algo]["measured"] = m
                row[algo]["measured_ratio"] = m["mean_bytes"] / row[algo]["convention_bytes"]
        rows.append(row)
    out = {"model": model_name, "num_classes": num_classes, "width": width,
           "layers": list(layers) if layers is not None else None, "min_depth": min_depth, "compress": compress,
           "local_iters": local_iters, "batch": batch, "rounds": rounds if measured else None,
           "params": conv["params"], "rows": rows}
    if model_name == "paper_resnet101" and num_classes == 100 and width == 1 and layers is None:
        out["paper_table1"] = PAPER_TABLE1
    return out


def format_table(rep: dict[str, Any]) -> str:
    """The report as an aligned text table (GB = 1e9 bytes)."""
    p = rep["params"]
    measured = "measured" in rep["rows"][0]["local_sgd"]
    layers = f", layers {','.join(map(str, rep['layers']))}" if rep["layers"] else ""
    lines = [
        f"Communication per round: {rep['model']}{layers}, {rep['num_classes']} classes, width {rep['width']:g}, "
        f"min depth {rep['min_depth']}, {rep['local_iters']} local iterations, batch {rep['batch']}"
        + (f", measured with --compress {rep['compress']}" if rep.get("compress", "none") != "none" else ""),
        f"{p['total']:,} parameters: {p['shared']:,} shared + {p['partitionable_blocks']} partitionable "
        f"blocks of {p['block']:,}",
        "GB = 1e9 bytes per round, sent + received, summed over workers.",
    ]
    header = ["workers", "local SGD", "ResIST (blocks)"]
    if measured:
        header += ["local SGD measured (x conv.)", "ResIST measured (x conv.)"]
    header += ["ResIST/local SGD" + (" (conv., meas.)" if measured else ""), "data parallel", "pipeline"]
    table = [header]
    for r in rep["rows"]:
        lsgd, res = r["local_sgd"], r["resist"]
        cells = [str(r["workers"]), f"{lsgd['convention_bytes'] / GB:.4g}",
                 f"{res['convention_bytes'] / GB:.4g} ({r['blocks_per_worker']})"]
        ratio = f"{res['convention_bytes'] / lsgd['convention_bytes']:.2f}"
        if measured:
            cells += [f"{x['measured']['mean_bytes'] / GB:.4g} ({x['measured_ratio']:.2f}x)" for x in (lsgd, res)]
            ratio += f", {res['measured']['mean_bytes'] / lsgd['measured']['mean_bytes']:.2f}"
        cells += [ratio, f"{r['data_parallel']['convention_bytes'] / GB:.4g}", f"{r['pipeline']['bytes'] / GB:.4g}"]
        table.append(cells)
    widths = [max(len(row[j]) for row in table) for j in range(len(header))]
    lines += ["", *("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table), ""]
    lines += ["local SGD, ResIST: paper convention (Table 1): 2 x 4 bytes x the parameters each worker holds",
              "  (ResIST: shared + max(ceil(P/S), m) blocks), no BatchNorm buffers."]
    if measured:
        lines += [f"measured: bytes the runtime moved per synchronization on S gloo processes, mean of "
                  f"{rep['rounds']} rounds,",
                  "  BatchNorm buffers included; an all-reduce moves 2(S-1)/S of its data each way per worker "
                  "(ring),", "  where the convention counts 1."]
    lines += [f"data parallel: all parameter gradients all-reduced at each of {rep['local_iters']} steps, "
              "same convention.",
              f"pipeline: GPipe, S stages of about equal parameter count; at each cut the activation forward and "
              "its gradient", f"  back, batch {rep['batch']}, {rep['local_iters']} steps."]
    if "paper_table1" in rep:
        t = rep["paper_table1"]
        lines.append(f"paper's Table 1 (minimum depth 4) at {' / '.join(map(str, t['workers']))} workers: "
                     f"local SGD {' / '.join(f'{v:.3f}' for v in t['local_sgd_gb'])} GB, "
                     f"ResIST {' / '.join(f'{v:.3f}' for v in t['resist_gb'])} GB.")
    return "\n".join(lines)
