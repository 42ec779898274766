"""Which blocks each sub-ResNet holds in a round (paper §2.2) and the evaluation scale (§2.6).

Pure Python, no torch: the plan is a function of (seed, round, workers, candidate blocks, min depth), so
every rank computes the same plan with no communication, and a resumed run sees the same plans.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from .registry import BALANCE_MODES, PARTITIONS, can
from .seeds import mix


def candidate_blocks(partitionable: Sequence[int], skippable: Sequence[int], mode: str) -> tuple[int, ...]:
    """The blocks a plan deals out.

    ``"section3"`` (ResIST, §2.2): the non-strided blocks of the third section. ``"naive"`` (the Fig. 6
    ablation): every block of every section that can be skipped, i.e. whose shortcut is the identity;
    a block that changes the tensor's shape cannot be dropped from a sub-network.
    """
    if mode == "section3":
        return tuple(partitionable)
    if mode == "naive":
        return tuple(skippable)
    raise ValueError(f"unknown partition mode {mode!r}; choose one of: {', '.join(PARTITIONS)}")


@dataclass(frozen=True)
class Plan:
    """One round's decomposition: ``assignments[w]`` are the candidate blocks sub-ResNet ``w`` holds."""

    assignments: tuple[tuple[int, ...], ...]
    candidates: tuple[int, ...]
    scale: float
    steps: tuple[int, ...] | None = None
    """Local steps each worker takes this round (speed-balanced plans); None: ``local_iters`` for all."""

    def holders(self, block: int) -> tuple[int, ...]:
        """The workers that hold ``block`` this round, in rank order."""
        return tuple(w for w, held in enumerate(self.assignments) if block in held)

    def skipped(self, worker: int) -> frozenset[int]:
        """Candidate blocks that ``worker``'s sub-ResNet passes over."""
        return frozenset(self.candidates) - frozenset(self.assignments[worker])


def eval_scale(num_workers: int, num_candidates: int, min_depth: int = 0) -> float:
    """Residual-branch multiplier c for the whole network (§2.6): blocks per sub-ResNet / P.

    1/S without a minimum depth; ``max(1/S, m/P)`` with one. It is stochastic depth's test-time rule
    with survival probability c.
    """
    if num_candidates == 0:
        return 1.0
    return max(1.0 / num_workers, min(min_depth, num_candidates) / num_candidates)


def validate(num_workers: int, num_candidates: int, min_depth: int) -> None:
    if num_workers < 1:
        raise ValueError(f"number of workers must be >= 1, got {num_workers}")
    if min_depth < 0:
        raise ValueError(f"min depth must be >= 0, got {min_depth}")
    if min_depth > num_candidates:
        raise ValueError(
            f"min depth {min_depth} exceeds the {num_candidates} partitionable blocks of this model"
        )


def check_dealing(algo: str, num_workers: int, num_candidates: int, min_depth: int) -> None:
    """Refuse a deal that trains something other than what ``algo`` names, silently.

    Without a minimum depth, more workers than blocks leave sub-networks with no dealt block: they
    train the stem and head alone, their averages pull the shared layers towards a network without
    blocks, and the whole network is evaluated with the blocks scaled by 1/S (a 16-worker run of a
    3-block model trains at chance). A minimum depth gives every sub-network that many blocks, shared,
    which is meaningful (the paper's 8 workers of ResNet101 with m = 4). With no block to deal, ResIST
    trains the whole model on every worker and averages: local SGD under another name (shallow
    ensembles then are ensembles of whole models, which is what they say).
    """
    if not can(algo, "partitions"):  # the others hold every block on every worker
        return
    if num_candidates == 0 and algo == "resist":
        raise ValueError("this model has no partitionable block (for a ResNet: none but the strided first one "
                         "in its third section), so ResIST would be local SGD; use --algo local_sgd, a deeper model "
                         "(--layers with 2 or more blocks in the third section), or --partition naive")
    if 0 < num_candidates < num_workers and min_depth == 0:
        raise ValueError(f"{num_workers} workers but this model has {num_candidates} partitionable blocks: "
                         f"{num_workers - num_candidates} sub-networks would hold none and train only the stem and "
                         f"head; use at most {num_candidates} workers, --min-depth 1..{num_candidates} (blocks shared "
                         f"so that each holds that many), or a deeper model")


def make_plan(seed: int, round_: int, num_workers: int, candidates: Sequence[int], min_depth: int = 0) -> Plan:
    """Deal the candidate blocks out to ``num_workers`` sub-ResNets for round ``round_`` (§2.2, Fig. 1).

    A random permutation is dealt round robin, so sizes differ by at most one and no block is shared.
    With a minimum depth m above P/S, fresh permutations are concatenated until there are S*m slots,
    cut into S chunks of m, and each chunk is de-duplicated and topped up with random blocks it lacks:
    every sub-ResNet then holds at least m distinct blocks, some blocks are shared, and since the first
    permutation lies wholly inside the S*m slots, every block is still held by someone.
    """
    cands = tuple(candidates)
    validate(num_workers, len(cands), min_depth)
    rng = random.Random(mix(seed, round_))
    p, s = len(cands), num_workers

    def permutation() -> list[int]:
        perm = list(cands)
        rng.shuffle(perm)
        return perm

    if min_depth * s <= p:
        perm = permutation()
        chunks = [perm[w::s] for w in range(s)]
    else:
        slots: list[int] = []
        while len(slots) < s * min_depth:
            slots += permutation()
        chunks = []
        for w in range(s):
            chunk = list(dict.fromkeys(slots[w * min_depth:(w + 1) * min_depth]))
            for b in permutation():
                if len(chunk) >= min_depth:
                    break
                if b not in chunk:
                    chunk.append(b)
            chunks.append(chunk)
    return Plan(
        assignments=tuple(tuple(sorted(c)) for c in chunks),
        candidates=cands,
        scale=eval_scale(s, p, min_depth),
    )


def whole_network_rounds(epochs: float, steps_per_epoch: float, local_iters: int, warmup_epochs: float = 0.0,
                         cooldown_epochs: float = 0.0) -> tuple[int, int | None]:
    """ResIST's rounds that train the whole network: ``(warmup_rounds, cooldown_from)``, rounds below
    the first and from the second on (None: no cool-down). The cool-down counts back from the end of
    the epoch schedule, whatever ``max_rounds`` cuts; rounds are whole, so each phase starts at a round
    boundary. The trainer and the cost accounting of ``resist.analysis.target`` both ask this."""
    warm = math.ceil(warmup_epochs * steps_per_epoch / local_iters)
    if not cooldown_epochs:
        return warm, None
    rounds = math.ceil(max(1, math.ceil(epochs * steps_per_epoch)) / local_iters)
    return warm, max(warm, rounds - math.ceil(cooldown_epochs * steps_per_epoch / local_iters))


def block_counts(speeds: Sequence[float], shared_cost: float, block_cost: float, num_candidates: int,
                 min_depth: int = 0) -> tuple[int, ...]:
    """How many blocks each sub-network gets so that the slowest worker's step is as short as it can be.

    A worker's step costs ``shared_cost + n * block_cost`` (the layers every sub-network runs, plus its n
    blocks) at ``speeds[w]`` cost units per second. Everyone starts at the minimum depth, and at one
    block where there are as many blocks as workers: a sub-network with none trains the stem and head
    alone and pulls the shared layers towards a network without blocks (the deal ``check_dealing``
    refuses; docs/heterogeneous.md). Each remaining block goes to
    the worker whose step it lengthens least (ties to the lower rank): this greedy fill minimizes the
    largest step time, since each worker's time grows linearly in its blocks. With equal speeds it
    gives the round robin's sizes (the first P mod S workers one block more).
    """
    s = len(speeds)
    floor = max(min_depth, 1 if num_candidates >= s else 0)
    counts = [min(floor, num_candidates)] * s
    for _ in range(num_candidates - sum(counts)):
        w = min(range(s), key=lambda w: ((shared_cost + (counts[w] + 1) * block_cost) / speeds[w], w))
        counts[w] += 1
    return tuple(counts)


def deal(perm: Sequence[int], counts: Sequence[int]) -> list[list[int]]:
    """Deal ``perm`` round robin, passing over a worker once it has its count: with the round robin's own
    sizes this is ``perm[w::S]``, so a balanced plan of equal speeds is the plain plan."""
    chunks: list[list[int]] = [[] for _ in counts]
    w = 0
    for b in perm:
        while len(chunks[w]) >= counts[w]:
            w = (w + 1) % len(counts)
        chunks[w].append(b)
        w = (w + 1) % len(counts)
    return chunks


def make_balanced_plan(seed: int, round_: int, speeds: Sequence[float], candidates: Sequence[int],
                       min_depth: int, shared_cost: float, block_cost: float, local_iters: int,
                       mode: str) -> Plan:
    """A plan for workers of different ``speeds`` (ours, not the paper's; docs/heterogeneous.md).

    ``depth``: a slower worker gets fewer blocks (:func:`block_counts`), dealt from the round's random
    permutation as :func:`make_plan` deals it. ``steps``: every worker gets its round-robin share and a
    slower one takes fewer local steps, ``round(local_iters * T / t_w)`` (at least 1, at most
    ``local_iters``) where t_w is its step time and T the longest step time the round would have if
    every worker were as fast as the fastest: the round lasts what it would on equal machines. ``depth+steps``: depth first, then
    steps for the imbalance left, which depth alone cannot remove when the shared layers by themselves
    take a slow worker longer than a fast worker's whole sub-network.

    The evaluation scale follows the plan (§2.6's rule generalized): c is the fraction of the
    partitioned blocks that a training step ran, averaged over all the steps of the round,
    ``sum_w k_w n_w / (P sum_w k_w)``. Equal depths and steps give §2.6's ``max(1/S, m/P)`` exactly.
    """
    if mode not in BALANCE_MODES:
        raise ValueError(f"unknown balance mode {mode!r}; choose one of: {', '.join(BALANCE_MODES)}")
    cands = tuple(candidates)
    s, p = len(speeds), len(cands)
    validate(s, p, min_depth)
    if any(not (v > 0 and math.isfinite(v)) for v in speeds):
        raise ValueError(f"speeds must be positive and finite, got {tuple(speeds)}")
    if "depth" in mode and min_depth * s < p:
        rng = random.Random(mix(seed, round_))
        perm = list(cands)
        rng.shuffle(perm)  # the same draw as make_plan's, so equal speeds give its plan
        counts = block_counts(speeds, shared_cost, block_cost, p, min_depth)
        assignments = tuple(tuple(sorted(c)) for c in deal(perm, counts))
    else:
        assignments = make_plan(seed, round_, s, cands, min_depth).assignments
    steps = None
    if "steps" in mode:
        work = [shared_cost + len(a) * block_cost for a in assignments]
        # The round as it would last if every worker were as fast as the fastest: unequal depths alone
        # (P not a multiple of S) then cost no step.
        target = max(work) / max(speeds)
        steps = tuple(max(1, min(local_iters, round(local_iters * target * v / c))) for c, v in zip(work, speeds))
    k = steps or (1,) * s
    scale = (sum(kw * len(a) for kw, a in zip(k, assignments)) / (p * sum(k))) if p else 1.0
    return Plan(assignments=assignments, candidates=cands, scale=scale, steps=steps)


def update_speeds(previous: Sequence[float] | None, work: Sequence[float], seconds: Sequence[float],
                  decay: float = 0.5) -> tuple[float, ...]:
    """Each worker's speed (cost units per second) as a moving average over rounds: ``work`` is what each
    trained this round (steps times its sub-network's cost per step), ``seconds`` its compute time."""
    now = [w / max(t, 1e-9) for w, t in zip(work, seconds)]
    if previous is None or len(previous) != len(now):
        return tuple(now)
    return tuple(decay * old + (1 - decay) * new for old, new in zip(previous, now))


def relative_speeds(speeds: Sequence[float], digits: int = 2) -> tuple[float, ...]:
    """Speeds relative to the fastest, rounded, so that timing noise of a few percent between equal
    workers does not reshuffle the plan; at least 10**-digits."""
    top = max(speeds)
    return tuple(max(round(v / top, digits), 10.0 ** -digits) for v in speeds)
