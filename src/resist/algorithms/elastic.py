"""One worker's side of an elastic synchronization (docs/elastic.md): the round that ends is averaged
over the quorum that the coordinator formed after it, whoever was lost or joined meanwhile.

:func:`~resist.algorithms.recovery.decide` says who contributes what; :func:`synchronize` carries it
out on the new quorum's communicator, for an algorithm with the ``elastic`` capability (ResIST, local
SGD):

1. a keeper puts the committed copy of a block no survivor trained back in its store, where it stands
   in for the lost holder's copy;
2. the shared bucket is summed over everyone (a joiner adds zeros) and divided by the members that
   trained the round;
3. ResIST's blocks go from their contributors straight to the next round's holders (the paper's route,
   :mod:`.routing`), next round's plan being over the new membership;
4. each block's committed value gets its keeper (:func:`~resist.algorithms.recovery.keepers`): the
   worker that sent it keeps what it sent, or its holder sends a backup;
5. a vote (one all-gather): every member got everything, and the blocks that went elsewhere are
   released; otherwise the caller restores its :class:`Snapshot` and the quorum is formed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..aggregate import divide_
from ..comm import Communicator
from .parts import Part, PartStore
from .recovery import Decision, keepers


@dataclass
class Snapshot:
    """What a worker's synchronization changes in place, as it was after the local steps: restored if the
    synchronization fails (a member lost during it), to redo it over the survivors.

    The shared bucket (all-reduced in place) and the blocks it trained together with others (averaged in
    place). Blocks it trained alone are not changed by a synchronization, and the ones it sends are
    released only once every member has everything, so neither needs a copy: the snapshot is a copy of
    part of what the worker sends."""

    flats: dict[Part, list[torch.Tensor]]
    held: tuple[Part, ...]
    """The blocks it held after its local steps (any other it holds after a failed attempt goes)."""

    @classmethod
    def of(cls, algo, holding: dict[Part, tuple[int, ...]]) -> "Snapshot":
        store = algo.store
        keys = ["shared", *(b for b in store.candidates if b in store.flats and len(holding.get(b, ())) > 1)]
        return cls({k: [f.clone() for f in store.flats[k]] for k in keys},
                   tuple(b for b in store.candidates if b in store.flats))

    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self.flats.values())


def restore(algo, snap: Snapshot, holding: dict[Part, tuple[int, ...]]) -> None:
    """Put ``algo``'s store back as it was after the local steps that ``snap`` followed."""
    store = algo.store
    for b in store.candidates:
        if b in store.flats and b not in snap.held:  # received, or restored from a kept copy, in vain
            store.release(b)
    for key, saved in snap.flats.items():
        for f, v in zip(store.flats[key], saved):
            f.copy_(v)
    if algo.partitions:
        algo.holding = holding


@dataclass
class Outcome:
    """What one worker's synchronization did: the copies it now keeps for others, and its bytes."""

    kept: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    restore_bytes: int = 0
    """Bytes this worker sent of blocks restored from a kept copy (recovery from a loss)."""
    backup_bytes: int = 0
    """Bytes this worker sent as backups (the cost of being able to recover)."""
    received_bytes: int = 0
    """Bytes this worker received in the synchronization (a joiner's: what it took to join)."""
    kept_bytes: int = 0


@torch.no_grad()
def synchronize(algo, comm: Communicator, d: Decision, kept: dict[int, list[torch.Tensor]],
                final: bool) -> Outcome:
    """Carry out decision ``d`` on ``comm`` (the new quorum's). ``kept``: the committed copies this
    worker kept at the last synchronization. ``final``: the run ends with this round (no next plan:
    each block is only averaged over its contributors). Raises ``CommError`` if a member fails."""
    store, me = algo.store, comm.rank
    received0 = comm.bytes.received["sync"]
    algo.reconfigure(comm)
    if me in d.joiners:
        algo.join()
    for b, keeper in d.restored.items():
        if keeper == me:  # the committed copy stands in for the lost holder's
            store.materialize(b, init=False)
            store.bucket(b, [b], fresh=True)
            for f, v in zip(store.flats[b], kept[b]):
                f.copy_(v)
    for f in store.flats["shared"]:
        comm.all_reduce(f)
        divide_(f, len(d.contributors))
    out, released = Outcome(), ()
    if algo.partitions:
        nxt = d.cur if final else algo.holders(d.round + 1)
        keep, backups = keepers(d.cur, nxt, comm.world_size) if not final else ({}, {})
        # What a worker sends and releases is not touched by the exchange: keeping it costs no copy.
        out.kept = {b: store.flats[b] for b, k in keep.items() if k == me}
        restored_sent = sum(_nbytes(store.flats[b]) * len([h for h in nxt[b] if h != me])
                            for b, k in d.restored.items() if k == me)
        released = algo.synchronize(d.cur, nxt, d.round, shared=False, release=False)
        sends = [(dst, f) for b, (h, dst) in backups.items() if h == me for f in store.flats[b]]
        recvs = []
        for b, (h, dst) in backups.items():
            if dst == me:
                out.kept[b] = [torch.empty_like(f) for f in _layout_like(store, b, algo)]
                recvs += [(h, f) for f in out.kept[b]]
        sent1 = comm.bytes.sent["sync"]
        comm.exchange(sends, recvs)
        out.backup_bytes = comm.bytes.sent["sync"] - sent1
        out.restore_bytes = restored_sent
        algo.holding, algo.round = nxt, d.round + 1
    with comm.tag("control"):
        comm.all_gather(torch.ones(1))  # the vote: returns only if every member got this far
    for b in released:
        store.release(b)  # (what it keeps for others it still holds, in out.kept)
    out.received_bytes = comm.bytes.received["sync"] - received0
    out.kept_bytes = sum(_nbytes(v) for v in out.kept.values())
    return out


def _nbytes(flats: list[torch.Tensor]) -> int:
    return sum(f.numel() * f.element_size() for f in flats)


def _layout_like(store: PartStore, b: int, algo) -> list[torch.Tensor]:
    """Empty flat buffers shaped as block ``b``'s bucket, for a backup this worker does not hold."""
    if b in store.flats:
        return store.flats[b]
    from .. import aggregate

    meta = store.state_tensors(b)  # meta tensors: shapes and dtypes only
    return aggregate.empty_like_packed(meta, store.device, store.align)
