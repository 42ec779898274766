"""A projection, not a measurement: what a run's wall-clock time would be on a cluster whose links run
at ``L`` Gbit/s with a fixed latency per message, from what its ``metrics.jsonl`` recorded.

For every round::

    projected round time = compute_s + bytes * 8 / (L * 1e9) + messages * latency

- ``compute_s``: the slowest worker's measured local-training seconds that round (on the machine
  that ran it; kept as measured).
- ``bytes``: per worker, the larger of what it sent and what it received that round (a full-duplex
  link carries both at once, so the busier direction sets the time); the round is charged the largest
  over workers. Only synchronization traffic is counted, not evaluation or checkpoints.
- ``messages``: the sequential messages of the worker that sent the most, as the communicator counted
  them (a row's ``messages``): ``2 (W-1)`` per ring all-reduce, and for a batched point-to-point
  exchange the larger of its sends and receives (they are posted at once). Rows written before the
  count existed fall back to an estimate: ``2 (W-1)`` per all-reduce, one per synchronization and, for
  data parallel, one per SGD step, with point-to-point messages uncounted (a lower bound).

Data parallel all-reduces its gradients every step, in buckets that start while backward is still
running, so its link time hides behind backward: per step it is projected as
``FORWARD_SHARE * c + max((1 - FORWARD_SHARE) * c, link)``, with ``c`` and ``link`` the round's compute
and link time divided by its steps (a serial sum overstated a measured data-parallel run over a
rate-limited link by 26-41%, docs/results/rate_limited_probed.md).

The projected run time is the sum over its rounds; the speed-up of a run is the first run's
projected time divided by its own, at the same link speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..registry import can
from ..train.metrics import human_bytes

DEFAULT_GBITS: tuple[float, ...] = (1.0, 10.0, 100.0)
DEFAULT_LATENCY_US = 50.0
#: The share of a step's compute that a gradient all-reduce cannot hide behind: the forward pass
#: (backward costs about twice the forward: two matrix products per layer against one).
FORWARD_SHARE = 1 / 3


def allreduce_messages(workers: int) -> int:
    """Sequential messages of one ring all-reduce over ``workers`` ranks: ``2 (W-1)``."""
    return 2 * max(0, workers - 1)


def cumulative_sent(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bytes sent so far by the worker that sent the most, per row (max over workers of the cumulative
    ``sent_bytes``). A run resumed on another number of workers restarts its counters at zero; the
    total so far is carried across such a restart."""
    out: list[int] = []
    offset = 0
    prev: Sequence[int] | None = None
    for row in rows:
        sent = row["sent_bytes"]
        if prev is not None and _restarted(prev, sent):
            offset = out[-1]
        out.append(offset + (max(sent) if sent else 0))
        prev = sent
    return out


def _per_round(rows: Sequence[Mapping[str, Any]], key: str) -> list[list[int]]:
    """Each worker's increase of the cumulative ``key`` over the row before (from zero for the first row
    and after a counter restart)."""
    out: list[list[int]] = []
    prev: Sequence[int] | None = None
    for row in rows:
        now = row[key]
        base = [0] * len(now) if prev is None or _restarted(prev, now) else prev
        out.append([s - b for s, b in zip(now, base)])
        prev = now
    return out


def round_sent(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bytes the slowest worker sent in each round: the largest increase of any worker's cumulative
    ``sent_bytes``."""
    return [max(r, default=0) for r in _per_round(rows, "sent_bytes")]


def round_bytes(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Bytes that set each round's link time: per worker the larger of sent and received, then the
    largest over workers (rows without ``recv_bytes`` count what was sent)."""
    sent = _per_round(rows, "sent_bytes")
    if not all("recv_bytes" in row for row in rows):
        return [max(r, default=0) for r in sent]
    recv = _per_round(rows, "recv_bytes")
    return [max((max(s, r) for s, r in zip(ss, rr)), default=0) for ss, rr in zip(sent, recv)]


def _restarted(prev: Sequence[int], sent: Sequence[int]) -> bool:
    return len(prev) != len(sent) or any(s < p for s, p in zip(sent, prev))


def round_steps(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """SGD steps each round took (``step`` is the cumulative step count at the end of the round)."""
    out, prev = [], 0
    for row in rows:
        out.append(max(0, int(row["step"]) - prev))
        prev = int(row["step"])
    return out


def round_messages(rows: Sequence[Mapping[str, Any]], algo: str | None = None) -> list[int]:
    """Sequential messages of the worker that sent the most in each round: as counted (``messages``), or
    estimated for older rows (see the module docstring)."""
    out = []
    for row, nbytes, steps in zip(rows, round_bytes(rows), round_steps(rows)):
        if "messages" in row:
            out.append(int(row["messages"]))
        elif nbytes == 0:
            out.append(0)
        else:
            # Once per SGD step too where gradients are all-reduced after every backward pass.
            allreduces = 1 + (steps if can(algo, "syncs_every_step") else 0)
            out.append(allreduces * allreduce_messages(len(row["sent_bytes"])))
    return out


def projected_round_s(compute_s: float, sent_bytes: float, messages: int, gbits: float,
                      latency_s: float, overlap_steps: int = 0) -> float:
    """One round: measured compute + serialization of the bytes at ``gbits`` + latency per message;
    with ``overlap_steps`` (data parallel's steps) each step's link time overlaps its backward pass."""
    link = sent_bytes * 8 / (gbits * 1e9) + messages * latency_s
    if overlap_steps <= 0:
        return compute_s + link
    c, t = compute_s / overlap_steps, link / overlap_steps
    return overlap_steps * (FORWARD_SHARE * c + max((1 - FORWARD_SHARE) * c, t))


@dataclass
class RunProjection:
    label: str
    rounds: int
    steps: int
    workers: int
    compute_s: float  # measured, summed over rounds
    measured_s: float  # measured parallel-equivalent time (compute + synchronization on this machine)
    sent_per_round: float  # mean per round of max over workers of max(sent, received)
    messages_per_round: float  # mean estimated messages per round
    projected_s: dict[float, float] = field(default_factory=dict)  # link Gbit/s -> projected seconds
    speedup: dict[float, float] = field(default_factory=dict)  # link Gbit/s -> first run's time / this

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "rounds": self.rounds, "steps": self.steps, "workers": self.workers,
            "measured_compute_s": self.compute_s, "measured_time_s": self.measured_s,
            "sent_bytes_per_round": self.sent_per_round, "messages_per_round": self.messages_per_round,
            "projected": [{"gbits": g, "time_s": self.projected_s[g], "speedup_vs_first": self.speedup.get(g)}
                          for g in self.projected_s],
        }


def project_run(rows: Sequence[Mapping[str, Any]], label: str, gbits: Sequence[float] = DEFAULT_GBITS,
                latency_us: float = DEFAULT_LATENCY_US, algo: str | None = None) -> RunProjection:
    """Project one run (its metrics rows) onto each link speed in ``gbits``."""
    check_link(gbits, latency_us)
    if not rows:
        raise ValueError(f"{label}: no rounds to project")
    sent, msgs = round_bytes(rows), round_messages(rows, algo)
    overlap = round_steps(rows) if can(algo, "syncs_every_step") else [0] * len(rows)
    compute = [float(r["compute_s"]) for r in rows]
    latency_s = latency_us * 1e-6
    n = len(rows)
    return RunProjection(
        label=label, rounds=n, steps=int(rows[-1]["step"]), workers=len(rows[-1]["sent_bytes"]),
        compute_s=sum(compute), measured_s=float(rows[-1]["time_s"]),
        sent_per_round=sum(sent) / n, messages_per_round=sum(msgs) / n,
        projected_s={g: sum(projected_round_s(c, b, m, g, latency_s, k) for c, b, m, k in zip(compute, sent, msgs, overlap))
                     for g in gbits},
    )


def compare(runs: Sequence[RunProjection]) -> list[RunProjection]:
    """Fill in each run's speed-up relative to the first run, at each link speed."""
    if runs:
        first = runs[0]
        for run in runs:
            run.speedup = {g: first.projected_s[g] / t if t > 0 else float("inf") for g, t in run.projected_s.items()}
    return list(runs)


def check_link(gbits: Sequence[float], latency_us: float) -> None:
    if not gbits:
        raise ValueError("--gbits needs at least one link speed")
    if any(not g > 0 for g in gbits):
        raise ValueError(f"link speeds must be positive Gbit/s, got {', '.join(f'{g:g}' for g in gbits)}")
    if not latency_us >= 0:
        raise ValueError(f"--latency-us must be zero or more, got {latency_us:g}")


def notes(runs: Sequence[RunProjection], latency_us: float, algos: Sequence[str | None] = ()) -> list[str]:
    """The assumptions behind the numbers, printed under the table and stored in the JSON."""
    out = [
        "compute: measured local-training seconds (slowest worker each round, summed), on the machine that ran it",
        "projected round time = compute + max over workers of max(bytes sent, bytes received) that round "
        f"* 8 / (L * 1e9) + messages * {latency_us:g} us",
        "messages: counted by the communicator (2(W-1) ring steps per all-reduce; per point-to-point exchange the "
        "larger of its sends and receives), or for runs recorded before that, estimated without ResIST's "
        "point-to-point messages (a lower bound)",
    ]
    if any(can(a, "syncs_every_step") for a in algos):
        out.append("data parallel: its per-step gradient all-reduces ran inside the measured compute time, "
                   "so its projection counts them twice (once measured, once projected)")
    if runs:
        out.append(f"speed-up: {runs[0].label}'s projected time / the run's, at the same link speed")
        if len({r.steps for r in runs}) > 1:
            out.append("the runs trained for different numbers of steps (" +
                       ", ".join(f"{r.label}: {r.steps}" for r in runs) + "); the times are of whole runs")
    return out


def _count(mean: float) -> str:
    """A mean count: whole when it is whole, else to one decimal (not 20.3333)."""
    return f"{mean:.0f}" if mean == int(mean) else f"{mean:.1f}"


def format_table(runs: Sequence[RunProjection], latency_us: float, algos: Sequence[str | None] = (),
                 scores: tuple[str, Sequence[str]] | None = None) -> str:
    """The table ``resist project`` prints. ``scores``: a column title and each run's best score as
    text, so that a speed-up is read next to what the run reached."""
    gbits = list(runs[0].projected_s) if runs else []
    title = (f"PROJECTION (not a measurement): wall-clock time on links of {', '.join(f'{g:g}' for g in gbits)} "
             f"Gbit/s with {latency_us:g} us per message")
    head = ["run", *([scores[0]] if scores else []), "rounds", "compute s", "measured s", "bytes/worker/round",
            "msgs/round"]
    head += [f"proj. {g:g} Gbit/s" for g in gbits]
    body = []
    for i, r in enumerate(runs):
        cells = [r.label, *([scores[1][i]] if scores else []), str(r.rounds), f"{r.compute_s:.2f}",
                 f"{r.measured_s:.2f}", human_bytes(r.sent_per_round), _count(r.messages_per_round)]
        cells += [f"{r.projected_s[g]:.2f} s ({r.speedup.get(g, float('nan')):.2f}x)" for g in gbits]
        body.append(cells)
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    text = [title, line(head)] + [line(c) for c in body]
    text.append("(NNx): projected speed-up relative to the first run")
    text += [f"- {n}" for n in notes(runs, latency_us, algos)]
    return "\n".join(text)
