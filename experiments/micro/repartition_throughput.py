"""Repartition throughput of ResIST beside the raw gloo send/recv bandwidth of the same machine.

Issue target: a ResIST repartition (``ResIST.end_round``: all-reduce of the shared layers, then the
peer-to-peer exchange of the partitioned blocks, paper §2.5) moves its bytes at >= 70% of what plain
``torch.distributed`` point-to-point moves between the same processes.

On W gloo processes (:func:`resist.comm.launch.spawn`), every rank measures, in one interleaved loop
(round robin over repetitions, in an order shuffled at every repetition, the same on every rank, so that
machine noise and after-effects of a neighbour hit every variant alike; a barrier before each timed
call):

- raw bandwidth: a ``--size-mb`` float32 buffer to rank+1 while receiving one from rank-1 (a ring; with
  W = 2 both directions of the one pair), three ways: ``comm.exchange`` (the communicator), plain
  ``dist.isend``/``dist.irecv`` (the baseline: the same full-duplex pattern without the communicator),
  and blocking ``dist.send``/``dist.recv`` (even ranks send first; half duplex). Throughput = bytes sent +
  received by this rank / time. A plain ``dist.all_reduce`` of the same buffer is timed too, its bytes
  counted as the communicator counts them (ring: 2(W-1)/W x size each way), and isend/irecv into a
  receive buffer allocated for the call (whether that costs first touches of fresh pages is up to the
  allocator; see the local copies);
- ResIST repartition: the real :class:`resist.algorithms.resist.ResIST` worker (``--model``,
  ``--width``, 10 classes), ``start(0)``, then ``end_round(r)`` for r = 0, 1, ... with no training in
  between. Throughput = bytes the communicator counted for the call (sent + received, this rank) / time;
- the same all-reduces and messages as this rank's previous ResIST round, replayed with plain ``dist``
  calls from buffers allocated before the clock starts (the traffic alone, no library work);
- local SGD's ``end_round`` (one all-reduce of the whole model), for reference.

Inside both ``end_round`` calls the time is split (by wrapping, in this process only) into: wire time of
the all-reduce and of the exchange (the backend calls; this includes waiting for a slower peer),
averaging after the all-reduce, ``aggregate.pack``/``unpack``/``mean``/``empty_like_packed`` copies,
``materialize``/``bucket``/``release`` of blocks, and the rest (Python bookkeeping, frees). Beside it,
local copies with no network: the whole model packed as ``aggregate.pack`` does (fresh buffers) and
into buffers allocated once.

Per rank the median over repetitions is taken; tables show the mean over ranks of those medians (and
the per-rank spread in the JSON).

    python experiments/micro/repartition_throughput.py [--workers 2 4] [--width 1.0] [--size-mb 32] [--reps 15] [--quick]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import command, environment, library_state, parser, record, table  # noqa: E402

RAW = ("exchange", "isend_irecv", "send_recv", "all_reduce", "isend_irecv_fresh")
LOCAL = ("pack_fresh", "pack_into")
SYNC = ("resist", "local_sgd")
REPLAY = ("resist_replay",)
PHASES = ("all_reduce_wire", "average", "exchange_wire", "pack", "unpack", "mean", "alloc_recv",
          "materialize", "bucket", "release", "other")


class _Probe:
    """Times named phases of one synchronize call by wrapping functions (benchmark-local). Times are
    exclusive: a wrapped call inside another (``pack`` inside ``bucket``) counts only once, in its own
    phase."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.b: dict[str, int] = {}
        self.pattern: list = []
        self._stack: list[float] = []  # time spent in wrapped callees, per open wrapped call

    def reset(self) -> None:
        self.t = dict.fromkeys(PHASES, 0.0)
        self.b = {"all_reduce": 0, "exchange": 0}
        self.pattern = []  # the messages of the call: ("ar", numel, dtype) or ("ex", sends, recvs)

    def wrap(self, fn, name: str):
        def timed(*a, **k):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                elapsed = time.perf_counter() - t0
                self.t[name] += elapsed - self._stack.pop()
                if self._stack:
                    self._stack[-1] += elapsed
        return timed


def _install_probe(comm) -> _Probe:
    """Wrap the aggregate helpers and the communicator of this process (whichever the library calls)."""
    from resist import aggregate

    probe = _Probe()
    probe.reset()
    for name, phase in (("pack", "pack"), ("unpack", "unpack"), ("mean", "mean"),
                        ("empty_like_packed", "alloc_recv")):
        if hasattr(aggregate, name):
            setattr(aggregate, name, probe.wrap(getattr(aggregate, name), phase))
    comm._all_reduce = probe.wrap(comm._all_reduce, "all_reduce_wire")
    comm._exchange = probe.wrap(comm._exchange, "exchange_wire")

    def recorded(fn, verb: str):
        """Note the messages and the bytes counted by each call."""
        def call(*a, **k):
            if verb == "all_reduce":
                probe.pattern.append(("ar", a[0].numel(), a[0].dtype))
            else:
                probe.pattern.append(("ex", [(p, t.numel(), t.dtype) for p, t in a[0]],
                                      [(p, t.numel(), t.dtype) for p, t in a[1]]))
            before = comm.bytes.sent["sync"] + comm.bytes.received["sync"]
            try:
                return fn(*a, **k)
            finally:
                probe.b[verb] += comm.bytes.sent["sync"] + comm.bytes.received["sync"] - before
        return call

    # all_reduce's own time beyond the backend call is the division (``average=True``).
    comm.all_reduce = recorded(probe.wrap(comm.all_reduce, "average"), "all_reduce")
    comm.exchange = recorded(comm.exchange, "exchange")
    return probe


def _rank(comm, spec: dict) -> dict:
    import torch.distributed as dist

    from resist.presets import preset
    from resist.train.trainer import build_algorithm

    w, me = comm.world_size, comm.rank
    nxt, prv = (me + 1) % w, (me - 1) % w
    n = int(spec["size_mb"] * 1e6) // 4
    send, recv = torch.randn(n), torch.empty(n)
    ring = 2 * (w - 1) / w * n * 4 * 2  # all-reduce bytes counted as the communicator does (sent + received)

    def raw_exchange():
        comm.exchange([(nxt, send)], [(prv, recv)])

    def raw_isend():
        for req in [dist.isend(send, nxt), dist.irecv(recv, prv)]:
            req.wait()

    def raw_send_recv():
        if me % 2 == 0:
            dist.send(send, nxt)
            dist.recv(recv, prv)
        else:
            dist.recv(recv, prv)
            dist.send(send, nxt)

    def raw_all_reduce():
        dist.all_reduce(recv)

    def raw_isend_fresh():
        fresh = torch.empty(n)  # as ResIST receives: into a buffer allocated for the call
        for req in [dist.isend(send, nxt), dist.irecv(fresh, prv)]:
            req.wait()

    def replay_buffers(pattern):
        """Buffers for the recorded messages of a ResIST round, allocated and touched before timing."""
        bufs, nbytes = [], 0
        for e in pattern:
            if e[0] == "ar":
                bufs.append(("ar", torch.zeros(e[1], dtype=e[2])))
                nbytes += 2 * 2 * (w - 1) / w * e[1] * e[2].itemsize
            else:
                bufs.append(("ex", [(p, torch.zeros(k, dtype=dt)) for p, k, dt in e[1]],
                             [(p, torch.zeros(k, dtype=dt)) for p, k, dt in e[2]]))
                nbytes += sum(k * dt.itemsize for _, k, dt in e[1] + e[2])
        return bufs, nbytes

    def replay(bufs):
        """The same all-reduces and messages as the ResIST round, with plain dist calls, no copies."""
        for e in bufs:
            if e[0] == "ar":
                dist.all_reduce(e[1])
                continue
            ops = [dist.P2POp(dist.isend, t, p) for p, t in e[1]] + [dist.P2POp(dist.irecv, t, p) for p, t in e[2]]
            if ops:
                for work in dist.batch_isend_irecv(ops):
                    work.wait()

    raw = {"exchange": raw_exchange, "isend_irecv": raw_isend, "send_recv": raw_send_recv,
           "all_reduce": raw_all_reduce, "isend_irecv_fresh": raw_isend_fresh}
    raw_bytes = dict.fromkeys(raw, 2 * n * 4)
    raw_bytes["all_reduce"] = ring

    from resist import aggregate
    pack_fresh = aggregate.pack  # the library's, before the probe wraps it
    probe = _install_probe(comm)
    cfg = preset("cifar10_cpu").replace(**{"model.name": spec["model"], "model.width": spec["width"],
                                           "model.num_classes": 10, "algo.workers": w})
    workers, build_s = {}, {}
    for algo in SYNC:
        t0 = time.perf_counter()
        wk = workers[algo] = build_algorithm(comm, cfg, 10, torch.device("cpu"), 1)
        wk.start(0)
        build_s[algo] = time.perf_counter() - t0
        for method in ("materialize", "bucket", "release"):
            setattr(wk.store, method, probe.wrap(getattr(wk.store, method), method))
    held = {a: sum(t.numel() * t.element_size() for t in wk.store.model.parameters() if not t.is_meta)
            for a, wk in workers.items()}

    # Local copies: the whole model packed into fresh buffers (what aggregate.pack does) and into buffers
    # allocated once (torch.cat(out=)): the difference is the cost of first-touching fresh memory.
    store = workers["local_sgd"].store
    whole = [t for part in store.all_parts() for t in store.state_tensors(part) if not t.is_meta]  # no momentum yet
    whole_bytes = sum(t.numel() * t.element_size() for t in whole)
    kept = [torch.zeros(k, dtype=dt) for dt, k in aggregate.layout(whole)]

    def pack_into():
        for buf in kept:
            torch.cat([t.reshape(-1) for t in whole if t.dtype == buf.dtype], out=buf)

    local = {"pack_fresh": lambda: pack_fresh(whole), "pack_into": pack_into}

    out = {"rank": me, "threads": torch.get_num_threads(), "held_param_bytes": held, "build_s": build_s,
           "whole_state_bytes": whole_bytes, **{k: [] for k in RAW + SYNC + REPLAY + LOCAL},
           "phases": {a: [] for a in SYNC}}
    names = list(RAW) + list(SYNC) + list(REPLAY) + list(LOCAL)
    last_pattern = []
    rounds = dict.fromkeys(workers, 0)
    for rep in range(spec["warmup"] + spec["reps"]):
        keep = rep >= spec["warmup"]
        order = list(names)
        random.Random(rep).shuffle(order)  # the same order on every rank; no variant always follows another
        for name in order:
            if name in REPLAY:
                if not last_pattern:  # no ResIST round recorded yet (the same on every rank)
                    continue
                bufs, nbytes = replay_buffers(last_pattern)
                dist.barrier()
                t0 = time.perf_counter()
                replay(bufs)
                dt = time.perf_counter() - t0
                if keep:
                    out[name].append({"s": dt, "bytes": nbytes})
                continue
            dist.barrier()
            if name in SYNC:
                before = comm.bytes.sent["sync"] + comm.bytes.received["sync"]
                probe.reset()
                t0 = time.perf_counter()
                workers[name].end_round(rounds[name])
                rounds[name] += 1
                dt = time.perf_counter() - t0
                moved = comm.bytes.sent["sync"] + comm.bytes.received["sync"] - before
                phases = dict(probe.t)
                phases["other"] = dt - sum(phases.values())
                if name == "resist":
                    last_pattern = probe.pattern
                if keep:
                    out[name].append({"s": dt, "bytes": moved, "ar_bytes": probe.b["all_reduce"],
                                      "ex_bytes": probe.b["exchange"]})
                    out["phases"][name].append(phases)
                continue
            fn = raw.get(name) or local[name]
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if keep:
                out[name].append({"s": dt, "bytes": raw_bytes.get(name, whole_bytes)})
    return out


def _summarize(ranks: list[dict]) -> dict:
    """Per-rank medians of throughput (and of seconds and bytes) per variant, then their mean over ranks."""
    res = {}
    for name in RAW + SYNC + REPLAY + LOCAL:
        per_rank = []
        for r in ranks:
            rows = r[name]
            per_rank.append({
                "median_s": statistics.median(x["s"] for x in rows),
                "median_bytes": statistics.median(x["bytes"] for x in rows),
                "median_GBps": statistics.median(x["bytes"] / x["s"] / 1e9 for x in rows),
            })
        res[name] = {"per_rank": per_rank,
                     "GBps": statistics.fmean(p["median_GBps"] for p in per_rank),
                     "min_GBps": min(p["median_GBps"] for p in per_rank),
                     "median_s": statistics.fmean(p["median_s"] for p in per_rank),
                     "MB": statistics.fmean(p["median_bytes"] for p in per_rank) / 1e6}
    for algo in SYNC:
        # Mean over ranks and repetitions of each phase; and the wire-only throughputs.
        rows = [(x, ph) for r in ranks for x, ph in zip(r[algo], r["phases"][algo])]
        total = statistics.fmean(x["s"] for x, _ in rows)
        phases = {k: statistics.fmean(ph[k] for _, ph in rows) for k in PHASES}
        ar_t = sum(ph["all_reduce_wire"] for _, ph in rows)
        ex_t = sum(ph["exchange_wire"] for _, ph in rows)
        res[algo]["breakdown"] = {
            "mean_s": total, "phases_s": phases,
            "phases_pct": {k: 100 * v / total for k, v in phases.items()},
            "all_reduce_MB": statistics.fmean(x["ar_bytes"] for x, _ in rows) / 1e6,
            "exchange_MB": statistics.fmean(x["ex_bytes"] for x, _ in rows) / 1e6,
            "all_reduce_wire_GBps": sum(x["ar_bytes"] for x, _ in rows) / ar_t / 1e9 if ar_t else None,
            "exchange_wire_GBps": sum(x["ex_bytes"] for x, _ in rows) / ex_t / 1e9 if ex_t else None,
            # what the call would reach if everything but the backend calls took no time
            "wire_only_GBps": sum(x["bytes"] for x, _ in rows) / (ar_t + ex_t) / 1e9,
        }
    base = res["isend_irecv"]["GBps"]
    per_rank_ratio = [r["median_GBps"] / b["median_GBps"]
                      for r, b in zip(res["resist"]["per_rank"], res["isend_irecv"]["per_rank"])]
    res["ratio"] = {"resist_vs_raw": res["resist"]["GBps"] / base,
                    "resist_vs_raw_min_rank": min(per_rank_ratio),
                    "local_sgd_vs_raw": res["local_sgd"]["GBps"] / base,
                    "resist_replay_vs_raw": res["resist_replay"]["GBps"] / base,
                    "resist_wire_only_vs_raw": res["resist"]["breakdown"]["wire_only_GBps"] / base,
                    "exchange_vs_raw": res["exchange"]["GBps"] / base}
    return res


def first_touch(sizes_mb=(16, 64), reps=8) -> list[dict]:
    """One thread, no peers: GB/s of filling a freshly allocated buffer vs a kept one (best of ``reps``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for mb in sizes_mb:
            n = int(mb * 1e6) // 4
            kept = torch.ones(n)
            fresh_t, kept_t = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                torch.empty(n).fill_(1.0)
                fresh_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                kept.fill_(2.0)
                kept_t.append(time.perf_counter() - t0)
            rows.append({"MB": mb, "fresh_GBps": mb / 1e3 / min(fresh_t), "kept_GBps": mb / 1e3 / min(kept_t)})
    finally:
        torch.set_num_threads(threads)
    return rows


def main() -> None:
    ap = parser(__doc__, workers=[2, 4], model="paper_resnet101", width=1.0,
                size_mb=(32.0, "raw buffer per message, decimal MB"), reps=15, warmup=2, target=0.70,
                quick=(False, "width 0.5, 16 MB, 4 repetitions (about a minute)"), name="repartition_throughput")
    args = ap.parse_args()
    if args.quick:
        args.width, args.size_mb, args.reps, args.warmup = 0.5, 16.0, 4, 1
    if any(w < 2 or w % 2 for w in args.workers):
        ap.error("--workers must be even and >= 2 (blocking send/recv pairs even with odd ranks)")

    from resist.comm.launch import spawn

    spec = {"model": args.model, "width": args.width, "size_mb": args.size_mb, "reps": args.reps,
            "warmup": args.warmup}
    results, threads = {}, None
    t_start, load_start, lib_start = time.perf_counter(), os.getloadavg(), library_state()
    for w in args.workers:
        t0 = time.perf_counter()
        ranks = spawn(w, _rank, (spec,), backend="gloo", timeout=600)
        threads = ranks[0]["threads"]
        results[w] = {"summary": _summarize(ranks), "wall_s": time.perf_counter() - t0,
                      "held_param_MB": {a: [r["held_param_bytes"][a] / 1e6 for r in ranks] for a in SYNC},
                      "ranks": ranks}
        s = results[w]["summary"]
        print(f"W={w}: raw isend/irecv {s['isend_irecv']['GBps']:.2f} GB/s, exchange {s['exchange']['GBps']:.2f}, "
              f"ResIST {s['resist']['GBps']:.2f} (ratio {s['ratio']['resist_vs_raw']:.2f}), "
              f"replayed {s['resist_replay']['GBps']:.2f}, "
              f"local SGD {s['local_sgd']['GBps']:.2f} [{results[w]['wall_s']:.0f}s]", flush=True)

    touch = first_touch()
    load = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    env = environment(lib_start, threads_per_rank=threads, backend="gloo", total_wall_s=time.perf_counter() - t_start,
                      loadavg_1min_start_end=load)
    lines = ["# ResIST repartition throughput vs raw gloo send/recv\n",
             f"Cores shared with other work (1-min load average {load[0]:.1f} at the start), "
             f"{env['threads_per_rank']} torch thread(s) per rank, gloo over loopback; total {env['total_wall_s']:.0f} s.\n",
             f"Every rank times each variant after a barrier, the variants interleaved (order shuffled) over "
             f"{args.reps} repetitions (after {args.warmup} warm-up). Throughput = bytes this rank sent + "
             "received / time (all-reduces counted as a ring, 2(W-1)/W x size each way, as the "
             "communicator counts them); per-rank median, then the mean over ranks (min over ranks in "
             f"brackets). Raw buffers: {args.size_mb:g} MB float32 to rank+1 and from rank-1. ResIST / "
             f"local SGD: `end_round(r)` of the real workers for {args.model} at width {args.width:g}, "
             "10 classes, rounds with no training between them. *Replayed*: the all-reduces and messages "
             "(sizes, peers, order) this rank's previous ResIST `end_round` made, sent with plain `dist` "
             "calls from buffers allocated before the clock starts: the same traffic without packing, "
             "copies or allocation.\n"]
    fmt = lambda mb, g: f"{mb:.1f} @ {g:.2f}" if g else "-"  # noqa: E731
    label = {"exchange": "raw, `comm.exchange`", "isend_irecv": "raw, plain `dist.isend`/`irecv` (baseline)",
             "send_recv": "raw, blocking `dist.send`/`recv`", "all_reduce": "raw, plain `dist.all_reduce`",
             "isend_irecv_fresh": "raw, `isend`/`irecv` into a buffer allocated for the call",
             "resist": "**ResIST repartition** (`end_round`)", "local_sgd": "local SGD `end_round` (all-reduce)",
             "resist_replay": "ResIST's messages replayed, kept buffers, no copies"}
    lines += table(["W", "variant", "MB moved / call (this rank)", "median time", "throughput GB/s", "vs raw isend/irecv"],
                   [[w, label[name], f"{v['MB']:.1f}", f"{v['median_s'] * 1000:.1f} ms", f"{v['GBps']:.2f} [{v['min_GBps']:.2f}]",
                     f"{100 * v['GBps'] / r['summary']['isend_irecv']['GBps']:.0f}%"]
                    for w, r in results.items() for name in RAW + SYNC + REPLAY for v in [r["summary"][name]]])
    lines += ["", f"Target: ResIST >= {100 * args.target:.0f}% of raw. "
              + "; ".join(f"W={w}: {100 * r['summary']['ratio']['resist_vs_raw']:.0f}% "
                          f"(worst rank {100 * r['summary']['ratio']['resist_vs_raw_min_rank']:.0f}%) "
                          f"-> {'met' if r['summary']['ratio']['resist_vs_raw'] >= args.target else 'NOT met'}"
                          for w, r in results.items()) + ".\n",
              "## Where the time of `end_round` goes\n",
              "Mean over ranks and repetitions, % of the call. *wire* = the backend call (includes waiting "
              "for a slower peer); *average* = the division after the all-reduce; pack / unpack / "
              "mean / alloc recv = `resist.aggregate` copies; materialize / bucket / release = allocating "
              "a block that arrives, moving its tensors into a flat buffer, dropping a block that leaves "
              "(phases the library at this commit lacks stay at 0%; times are exclusive, e.g. the `pack` "
              "inside `bucket` counts as pack); other = the rest (Python, frees). Wire GB/s = bytes / wire "
              "time of that verb alone; wire-only GB/s = all bytes / (both wire times), the call's "
              "throughput if nothing but the backend calls took time.\n",
              *table(["W", "algo", "time / call", *PHASES, "all-reduce MB @ wire GB/s", "exchange MB @ wire GB/s",
                      "wire-only GB/s (vs raw)"], [
                  [w, algo, f"{b['mean_s'] * 1000:.0f} ms", *(f"{b['phases_pct'][k]:.0f}%" for k in PHASES),
                   fmt(b["all_reduce_MB"], b["all_reduce_wire_GBps"]), fmt(b["exchange_MB"], b["exchange_wire_GBps"]),
                   f"{b['wire_only_GBps']:.2f} ({100 * b['wire_only_GBps'] / r['summary']['isend_irecv']['GBps']:.0f}%)"]
                  for w, r in results.items() for algo in SYNC for b in [r["summary"][algo]["breakdown"]]])]
    lines += ["", "## Local copies (no network)\n",
              "The whole model state (local SGD worker) packed into one flat buffer per dtype with "
              "`aggregate.pack` (`torch.cat` into a freshly allocated buffer), and into buffers allocated "
              "once (`torch.cat(..., out=)`); GB/s = bytes copied / time, per-rank median, mean over "
              "ranks, all ranks at once. This is what a synchronization that packs every round pays, and "
              "what making a flat buffer for a block that arrives costs.\n",
              *table(["W", "MB", "pack (fresh buffers)", "pack into kept buffers", "fresh / kept time"], [
                  [w, f"{f['MB']:.0f}", f"{f['median_s'] * 1000:.1f} ms ({f['GBps']:.2f} GB/s)",
                   f"{k['median_s'] * 1000:.1f} ms ({k['GBps']:.2f} GB/s)", f"{f['median_s'] / k['median_s']:.1f}x"]
                  for w, r in results.items() for f, k in [(r["summary"]["pack_fresh"], r["summary"]["pack_into"])]])]
    lines += ["", "Why: first touches of fresh memory are expensive on this machine. One thread, filling a buffer "
              "allocated just before vs one kept (best of 8): "
              + "; ".join(f"{t['MB']:g} MB: {t['fresh_GBps']:.2f} vs {t['kept_GBps']:.2f} GB/s" for t in touch)
              + ". Whether an allocation gets new pages is up to the allocator (glibc maps large blocks "
              "afresh and may or may not recycle heap memory): the raw receive into a buffer allocated for "
              "the call above happens to be recycled and shows no cost, while `aggregate.pack`'s flats "
              "(table above) pay it."]
    record(args.name, {"args": vars(args), "first_touch": touch, "results": {str(w): r for w, r in results.items()}},
           lines, command(), env)


if __name__ == "__main__":
    main()
