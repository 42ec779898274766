"""Are our baselines as fast as PyTorch's own? Local SGD vs PostLocalSGDOptimizer + PeriodicModelAverager,
data parallel vs DistributedDataParallel, side by side on the same config, data and machine.

A slow baseline would flatter ResIST, so ours must take no more than 1.05x PyTorch's time and reach the
same accuracy. Ours run through the released CLI (``resist train --runtime dist``); PyTorch's run here
on processes started the same way (gloo on 127.0.0.1, one compute thread per rank), with the same model
class and seed (ours seeds each part of the model separately, so the initial weights differ but follow
the same distributions), batches (our BatchStream), SGD hyper-parameters and number of steps. Time is the
training loop only (no start-up, no evaluation): for ours the run's parallel-equivalent time (per round,
the slowest rank's compute plus the synchronization), for PyTorch's the slowest rank's wall time from a
barrier before the first step to a barrier after the last. Configurations are interleaved over
repetitions so that machine noise hits them alike; medians are reported.

Matched semantics: local SGD averages every ``local_iters`` steps and carries momentum across rounds
(PeriodicModelAverager with ``warmup_steps = local_iters - 1`` averages after steps L, 2L, ...; ours with
``--carry-momentum``); ours also averages BatchNorm buffers, PyTorch's only parameters. Data parallel:
DDP's defaults (bucketed all-reduce overlapped with backward, buffers broadcast from rank 0 every step).
PyTorch's models are evaluated as PyTorch leaves them (rank 0's BatchNorm statistics) and, apart, with
the statistics averaged over the ranks as ours are.

    python experiments/run.py fair_baselines --data-dir ../shared/data/cifar10 [--rounds 4 --local-iters 25 --reps 3]
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from common import ROOT, Spec, options, record, spread
from resist.comm import find_free_port
from resist.data import load_dataset
from resist.data.datasets import ImageArrays
from resist.data.sharding import BatchStream, eval_batches
from resist.models import create_model


def _torch_rank(rank: int, kind: str, a: dict, port: int, result: str) -> None:
    """One rank of PyTorch's implementation: ``kind`` is ``post_local_sgd`` or ``ddp``."""
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.algorithms.model_averaging.utils import average_parameters
    from torch.distributed.optim import PostLocalSGDOptimizer
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a["workers"],
                            timeout=datetime.timedelta(seconds=a["timeout"]))  # every collective fails, never hangs
    data = load_dataset("cifar10", a["data_dir"])
    torch.manual_seed(a["seed"])
    model = create_model(a["model"], num_classes=10, width=a["width"])
    stream = BatchStream(data.train, data.mean, data.std, a["workers"], rank, a["batch"], a["seed"])
    opt = torch.optim.SGD(model.parameters(), lr=a["lr"], momentum=a["momentum"], weight_decay=a["wd"])
    if kind == "ddp":
        net = DistributedDataParallel(model)
    else:
        net = model
        opt = PostLocalSGDOptimizer(opt, PeriodicModelAverager(period=a["local_iters"], warmup_steps=a["local_iters"] - 1))
    dist.barrier()
    t0 = time.perf_counter()
    for step in range(a["rounds"] * a["local_iters"]):
        x, y = stream.batch(step)  # inside the timed loop, as in ours
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dist.barrier()
    elapsed = torch.tensor([time.perf_counter() - t0])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    if kind != "ddp":  # a no-op when the steps are a multiple of L (the averager has just averaged)
        average_parameters(model.parameters(), dist.group.WORLD)
    test = ImageArrays(data.test.x[:a["eval_limit"]], data.test.y[:a["eval_limit"]])
    acc = {"acc": _accuracy(model, test, data) if rank == 0 else None}  # PyTorch's: rank 0's BatchNorm statistics
    for b in model.buffers():  # ours: BatchNorm statistics averaged over the ranks
        if b.is_floating_point():
            dist.all_reduce(b)
            b /= a["workers"]
    acc["acc_bn_averaged"] = _accuracy(model, test, data) if rank == 0 else None
    if rank == 0:
        Path(result).write_text(json.dumps({"time_s": elapsed.item(), **acc}))
    dist.destroy_process_group()


def _accuracy(model, test, data) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in eval_batches(test, data.mean, data.std):
            correct += (model(x).argmax(1) == y).sum().item()
    return 100.0 * correct / len(test.y)


class Hung(RuntimeError):
    """A repetition that failed or passed its deadline; it is retried and reported."""


def run_torch(kind: str, a: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        ctx = mp.spawn(_torch_rank, args=(kind, a, find_free_port(), str(result)), nprocs=a["workers"], join=False)
        deadline = time.monotonic() + a["deadline"]
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    raise Hung(f"{kind} passed its {a['deadline']:.0f} s deadline")
        except mp.ProcessRaisedException as e:
            raise Hung(f"{kind} failed: {str(e).strip().splitlines()[-1]}") from None
        except mp.ProcessExitedException as e:
            raise Hung(f"{kind}: {e}") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return json.loads(result.read_text())


def run_ours(algo: str, a: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "resist.cli", "train", "cifar10_cpu", "--runtime", "dist", "--backend", "gloo",
                "--algo", algo, "--workers", str(a["workers"]), "--model", a["model"], "--width", str(a["width"]),
                "--local-iters", str(a["local_iters"]), "--max-rounds", str(a["rounds"]), "--eval-every", "1000000",
                "--lr", str(a["lr"]), "--momentum", str(a["momentum"]), "--weight-decay", str(a["wd"]),
                "--batch-size", str(a["batch"]), "--seed", str(a["seed"]), "--carry-momentum",
                "--set", "optim.lr_decay_at=[]", "--set", f"data.eval_limit={a['eval_limit']}",
                "--data-dir", a["data_dir"], "--out", tmp, "--timeout", str(a["timeout"])]
        try:
            proc = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True, timeout=a["deadline"])
        except subprocess.TimeoutExpired:
            raise Hung(f"{algo} passed its {a['deadline']:.0f} s deadline") from None
        if proc.returncode != 0:
            raise Hung(f"{algo} failed: {proc.stderr.strip()[-300:]}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        return {"time_s": summary["time_s"], "acc": summary["final_acc"]}


PAIRS = [("local_sgd", "post_local_sgd"), ("data_parallel", "ddp")]


def add_arguments(ap) -> None:
    options(ap, workers=2, model="paper_resnet101", width=0.125, batch=128, local_iters=25, rounds=4, lr=0.05, reps=3,
            eval_limit=10000, name="fair_baselines",
            timeout=(120.0, "seconds any collective may wait before failing"),
            deadline=(600.0, "seconds a whole repetition may take (one takes about 40 s at the defaults; on 2026-11-27 "
                             "a DDP repetition hung with one rank idle, which the collective timeout did not catch)"),
            retries=(2, "times a failed or hung repetition is retried"))


def specs(args) -> list[Spec]:
    """Repetition k of each implementation, in the interleaved order they run (ours: ``resist train``)."""
    return [Spec(f"{name}_rep{rep}", "cifar10_cpu", ["--algo", name] if name == ours else [], name)
            for rep in range(args.reps) for ours, theirs in PAIRS
            for name in ((ours, theirs) if rep % 2 == 0 else (theirs, ours))]


def execute(args, specs: list[Spec]) -> dict:
    """Each repetition of each implementation, retried when it fails or hangs; ``results`` by implementation."""
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"fair_baselines: data folder {args.data_dir} does not exist; pass --data-dir")
    a = {"data_dir": args.data_dir, "workers": args.workers, "model": args.model, "width": args.width,
         "batch": args.batch, "local_iters": args.local_iters, "rounds": args.rounds, "lr": args.lr,
         "momentum": 0.9, "wd": 5e-4, "eval_limit": args.eval_limit, "timeout": args.timeout,
         "deadline": args.deadline}
    results: dict[str, list[dict]] = {name: [] for pair in PAIRS for name in pair}
    failures: list[dict] = []
    for spec in specs:
        name, rep = spec.label, int(spec.name.rsplit("_rep", 1)[1])
        a["seed"] = rep  # a new seed (initial weights, batch order, augmentation) per repetition, shared by all
        for attempt in range(args.retries + 1):
            try:
                r = {"seed": rep, **(run_ours(name, a) if spec.flags else run_torch(name, a))}
                break
            except Hung as e:
                failures.append({"rep": rep, "name": name, "attempt": attempt, "error": str(e)})
                print(f"[rep {rep}] {name}: {e}; {'retrying' if attempt < args.retries else 'giving up'}", flush=True)
        else:
            raise SystemExit(f"fair_baselines: {name} failed {args.retries + 1} times in repetition {rep}")
        results[name].append(r)
        print(f"[rep {rep}] {name}: {r['time_s']:.2f} s, {r['acc']:.2f}%"
              + (f" ({r['acc_bn_averaged']:.2f}% with BN statistics averaged)" if "acc_bn_averaged" in r else ""),
              flush=True)
    return {"results": results, "failures": failures}


def tabulate(args, got: dict, env: dict) -> None:
    results, failures = got["results"], got["failures"]
    env["cores_used"] = len(os.sched_getaffinity(0))
    med = {n: statistics.median(r["time_s"] for r in rs) for n, rs in results.items() if rs}
    lines = ["# Our baselines vs PyTorch's own implementations\n",
             f"{args.workers} gloo processes on 127.0.0.1 sharing {env['cores_used']} core(s), one compute thread "
             f"each, {args.rounds * args.local_iters} SGD steps of real CIFAR-10 (constant lr {args.lr}, momentum "
             f"0.9, weight decay 5e-4); accuracy on the first {args.eval_limit} test images. Repetition k uses seed "
             "k for everything random, in both implementations; median training time and mean ± standard "
             f"deviation of accuracy over {args.reps} interleaved repetitions.\n",
             "| ours | time (s) | acc (%) | PyTorch | time (s) | acc (%) | acc, BN statistics averaged (%) | "
             "ours / PyTorch time |", "|---|---|---|---|---|---|---|---|"]
    for ours, theirs in PAIRS:
        acc = {n: spread([r["acc"] for r in results[n]]) for n in (ours, theirs)}
        bn = spread([r["acc_bn_averaged"] for r in results[theirs]])
        lines.append(f"| {ours} | {med[ours]:.2f} | {acc[ours]} | {theirs} | {med[theirs]:.2f} | {acc[theirs]} | {bn} | "
                     f"{med[ours] / med[theirs]:.3f} |")
    lines += ["", "Per repetition (ours / PyTorch time): " + "; ".join(
        f"{ours}: " + ", ".join(f"{o['time_s'] / t['time_s']:.3f}" for o, t in zip(results[ours], results[theirs]))
        for ours, theirs in PAIRS) + ".",
              "", f"Failed or hung attempts, retried: {len(failures)}" + "".join(
                  f"\n- repetition {f['rep']}, {f['name']}, attempt {f['attempt']}: {f['error']}" for f in failures)]
    record(args.name, {"args": vars(args), "results": results, "failures": failures}, lines, args.command, env)
