"""The two runtimes agree: the same seed and config give the same global model in-process and on
real gloo processes (parameters and BatchNorm buffers), for ResIST with and without min-depth sharing,
local SGD, data parallel, Streaming DiLoCo and overlapped ResIST (whose all-reduces and exchanges are
asynchronous on gloo), on ResNets and on a vision transformer.

What holds, and is tested exactly: at 2 workers the two runtimes are bitwise equal for any number of
rounds (a sum of two numbers is the same in either order). At 3+ workers gloo's ring sums in another
order than the in-process rank order, so after one round the models agree to the last bits of float32
(1e-6 here); training then amplifies such a difference like any other last-bit change (1 vs 2 compute
threads alone does the same), so no bound is claimed for longer runs. Byte counts are equal always.
"""

from __future__ import annotations

import pytest
import torch

from resist.presets import preset
from resist.data import load_dataset
from resist.train import train

DATA = load_dataset("synthetic", n_train=192, n_test=64, num_classes=4, size=12)


def final_model(tmp_path, runtime, **over):
    cfg = preset("smoke").replace(**{
        "model.layers": (1, 1, 7, 1), "data.batch_size": 8, "algo.local_iters": 2, "run.max_rounds": 3,
        "run.eval_every": 100, "run.runtime": runtime, "run.out": str(tmp_path / runtime), "run.timeout": 60,
        **over})
    summary = train(cfg, DATA)
    return torch.load(tmp_path / runtime / "model.pt", weights_only=True), summary




CASES = [
    ("resist", 2, 0), ("resist", 3, 0), ("resist", 4, 0), ("resist", 3, 3), ("resist", 4, 3),
    ("local_sgd", 2, 0), ("local_sgd", 3, 0), ("local_sgd", 4, 0), ("data_parallel", 3, 0),
    ("resist+outer", 2, 0), ("resist+outer", 3, 3), ("resist+outershared", 2, 0), ("resist+outershared", 3, 3), ("local_sgd+outer", 2, 0), ("local_sgd+outer", 3, 0),
    ("resist+bf16", 2, 0), ("data_parallel+fp16", 2, 0),
    ("resist+q8", 2, 0), ("resist+q4", 3, 3), ("local_sgd+q8", 3, 0), ("resist+q4ef", 2, 3), ("local_sgd+q2ef", 2, 0),
    ("data_parallel+q8", 3, 0), ("data_parallel+q4dp", 2, 0),
    ("resist+bn2", 2, 3), ("local_sgd+bn2", 3, 0),
    ("resist+vit", 2, 0), ("resist+vit", 3, 3), ("local_sgd+vit", 2, 0),
    ("streaming_diloco+stream", 2, 0), ("streaming_diloco+stream", 3, 0), ("streaming_diloco+streamcarry", 2, 0),
    ("resist+overlap", 2, 0), ("resist+overlap", 2, 3), ("resist+overlapcarry", 2, 0), ("resist+overlapdelta", 2, 3),
    ("resist+prefetch", 2, 0), ("resist+prefetchlate", 2, 3), ("resist+overlapq8", 2, 3),
    ("resist+overlaprestart", 2, 3),
]
# A vision transformer (no BatchNorm; LayerNorm, attention) with its recipe: AdamW, warm-up and cosine.
VIT = {"model.name": "vit_tiny", "model.layers": None, "model.width": 1 / 16, "optim.inner": "adamw",
       "optim.lr": 1e-3, "optim.weight_decay": 0.05, "optim.lr_schedule": "cosine", "optim.lr_warmup_epochs": 0.5}
EXTRA = {"": {}, "outer": {"algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},  # DiLoCo's outer Nesterov SGD
         # the outer step on the shared layers only (the blocks plainly averaged)
         "outershared": {"algo.outer_lr": 0.7, "algo.outer_momentum": 0.9, "algo.outer_blocks": False},
         "bf16": {"run.amp": "bf16"}, "fp16": {"run.amp": "fp16"},
         "q8": {"algo.compress": "q8"}, "q4": {"algo.compress": "q4"},
         "q4ef": {"algo.compress": "q4", "algo.compress_what": "update", "algo.error_feedback": True},
         "q2ef": {"algo.compress": "q2", "algo.compress_what": "update", "algo.error_feedback": True},
         "q4dp": {"algo.compress": "q4", "algo.error_feedback": True},  # data parallel: gradients + feedback
         "bn2": {"algo.bn_sync_every": 2},
         "vit": VIT,
         # Streaming DiLoCo: 2 fragments of a 4-step round, each merged 1 step after its (async) all-reduce.
         "stream": {"algo.local_iters": 4, "algo.fragments": 2, "algo.sync_delay": 1, "algo.mix_alpha": 0.5,
                    "algo.outer_lr": 0.7, "algo.outer_momentum": 0.9},
         "streamcarry": {"algo.local_iters": 6, "algo.fragments": 3, "algo.sync_delay": 1, "algo.mix_alpha": 0.25,
                         "algo.carry_momentum": True},
         # Overlapped ResIST: round r's all-reduce and exchange (non-blocking on gloo) land at step 1 of
         # round r+1, with an evaluation every round (which waits for them).
         "overlap": {"algo.local_iters": 3, "algo.overlap": 1, "algo.mix_alpha": 0.5, "run.eval_every": 1},
         "overlapcarry": {"algo.local_iters": 4, "algo.overlap": 2, "algo.mix_alpha": 0.25,
                          "algo.carry_momentum": True},
         "overlapdelta": {"algo.local_iters": 4, "algo.overlap": 2, "algo.overlap_merge": "delta"},
         # Prefetched blocks: sent (non-blocking) after step 2 of a 4-step round, their deltas at its end;
         # an evaluation every round waits for both.
         "prefetch": {"algo.local_iters": 4, "algo.overlap": 2, "algo.prefetch": True, "algo.overlap_merge": "delta",
                      "run.eval_every": 1},
         # tau 3 of 4: the blocks leave right after the round's own merge at step 3.
         "prefetchlate": {"algo.local_iters": 4, "algo.overlap": 3, "algo.prefetch": True, "algo.mix_alpha": 0.5},
         # Compressed and overlapped: the coded all-reduces and exchange in a thread on gloo (run_async).
         # Momentum restarts at the merge (step 2): the optimizer is rebuilt mid-round on every rank.
         "overlaprestart": {"algo.local_iters": 4, "algo.overlap": 2, "algo.overlap_merge": "delta",
                            "algo.overlap_restart": True},
         "overlapq8": {"algo.local_iters": 4, "algo.overlap": 2, "algo.mix_alpha": 0.5, "algo.compress": "q8",
                       "run.eval_every": 1}}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algo,workers,min_depth", CASES)
def test_inprocess_equals_gloo(tmp_path, one_thread, algo, workers, min_depth):
    name, _, extra = algo.partition("+")
    over = {"algo.name": name, "algo.workers": workers, "algo.min_depth": min_depth,
            "run.max_rounds": 3 if workers == 2 else 1, **EXTRA[extra]}
    local, s_local = final_model(tmp_path, "inprocess", **over)
    dist, s_dist = final_model(tmp_path, "dist", **over)
    assert local.keys() == dist.keys()
    worst = max((local[k].double() - dist[k].double()).abs().max().item() for k in local)
    if workers == 2:
        assert worst == 0.0  # a sum of two is the same in any order: bitwise
    else:
        assert worst <= 1e-6  # one round: gloo's ring sums in another order than rank order
    assert s_local["sent_bytes_per_worker"] == s_dist["sent_bytes_per_worker"]
    assert s_local["recv_bytes_per_worker"] == s_dist["recv_bytes_per_worker"]
    assert s_local["model_state_bytes_per_worker"] == s_dist["model_state_bytes_per_worker"]


GPUS = torch.cuda.device_count()


@pytest.mark.skipif(GPUS == 0, reason="needs CUDA")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("algo", ["resist", "local_sgd", "data_parallel"])
def test_inprocess_equals_nccl(tmp_path, monkeypatch, algo):
    """NCCL takes one GPU per rank, so the world is as large as the GPUs allow (2 where there are 2+).
    cuDNN may pick other kernels in another process, so equal up to rounding (relative to each tensor's
    scale) rather than bitwise; TF32 is off (the spawned ranks inherit the variable)."""
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    workers = min(GPUS, 2)
    over = {"algo.name": algo, "algo.workers": workers, "run.device": "cuda", "run.backend": "nccl"}
    local, s_local = final_model(tmp_path, "inprocess", **over)
    dist, s_dist = final_model(tmp_path, "dist", **over)
    rel = {k: ((local[k].double() - dist[k].double()).abs().max() / local[k].double().abs().max().clamp_min(1e-6)).item()
           for k in local if local[k].is_floating_point()}
    worst = max(rel, key=rel.get)
    print(f"worst relative difference {rel[worst]:.2e} in {worst}")
    assert rel[worst] <= 1e-3, (worst, rel[worst])
    assert s_local["sent_bytes_per_worker"] == s_dist["sent_bytes_per_worker"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algo", ["resist", "local_sgd"])
def test_inprocess_equals_gloo_on_an_image_folder(image_tree, tmp_path, one_thread, algo):
    """JPEG files decoded by loader processes (each rank scans the folder itself on gloo), the ImageNet
    stem and random-resized crops: the two runtimes still end bitwise equal at 2 workers."""
    over = {"algo.name": algo, "algo.workers": 2, "data.dataset": "imagefolder", "data.data_dir": str(image_tree),
            "data.crop_size": 16, "data.loader_workers": 1, "model.stem": "imagenet", "run.max_rounds": 3,
            "run.eval_every": 3, "algo.min_depth": 3}
    models, summaries = {}, {}
    for runtime in ("inprocess", "dist"):
        cfg = preset("smoke").replace(**{**over, "model.layers": (1, 1, 7, 1), "data.batch_size": 8,
                                         "algo.local_iters": 2, "run.runtime": runtime, "run.timeout": 60,
                                         "run.out": str(tmp_path / runtime)})
        summaries[runtime] = train(cfg)
        models[runtime] = torch.load(tmp_path / runtime / "model.pt", weights_only=True)
    assert all(torch.equal(models["inprocess"][k], models["dist"][k]) for k in models["inprocess"])
    assert summaries["inprocess"]["best_acc"] == summaries["dist"]["best_acc"]
    assert summaries["inprocess"]["final_top5"] == summaries["dist"]["final_top5"]
    assert summaries["inprocess"]["sent_bytes_per_worker"] == summaries["dist"]["sent_bytes_per_worker"]
