"""torch.distributed runtime: one :class:`Communicator` per process over the default (world) group.

Only this module and :mod:`resist.comm.launch` import ``torch.distributed``. Blocking verbs run on the
world group; transfers started without waiting (``all_reduce_async``, ``exchange_async``) run on a
second group of all the ranks, made once at construction: on one group a later collective's bytes
queue behind theirs on the same connections, so a round's small bookkeeping collectives waited for
the whole background transfer and nothing overlapped (observed over a rate-limited link;
docs/streaming.md, "On its own process group"). Under NCCL, tensors that live elsewhere (e.g. on the CPU)
are staged to the current CUDA device and copied back, so callers need not care where a tensor lives.
Backend errors (timeouts, peers that went away) surface as :class:`CommError` naming this rank.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from .base import CommError, Communicator, Pending


class DistCommunicator(Communicator):
    """A :class:`Communicator` over the already initialized default process group."""

    def __init__(self) -> None:
        """Every verb, point-to-point included, is bounded by the process group's timeout."""
        if not dist.is_initialized():
            raise RuntimeError("DistCommunicator needs an initialized default process group")
        super().__init__(dist.get_rank(), dist.get_world_size())
        self.backend = dist.get_backend()
        if self.backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        # Collective: every rank constructs its communicator at the same point (comm.launch).
        self._background = dist.new_group(backend=self.backend) if self.world_size > 1 else None

    @contextlib.contextmanager
    def _guard(self, verb: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:  # DistBackendError and friends are RuntimeErrors
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CommError(f"rank {self.rank}: {verb} failed: {first_line}") from exc

    def _stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` itself if the backend can use it as is, else a contiguous copy on its device."""
        if tensor.device == self.device and tensor.is_contiguous():
            return tensor
        return tensor.to(self.device, memory_format=torch.contiguous_format)

    def _group(self):
        """The group of this thread's verbs: the background group inside :meth:`run_async`, else the world."""
        return getattr(self._local, "group", None)

    def run_async(self, work: Callable[[], None]) -> Pending:
        """``work`` runs now, in a thread of its own whose verbs go over the background group (as
        ``all_reduce_async`` and ``exchange_async`` do), while the caller goes on; ``wait()`` joins it
        and raises what it raised."""
        if self.world_size == 1:
            return super().run_async(work)
        tag, errors = self._tag, []

        def body() -> None:
            self._local.group, self._local.tag = self._background, tag
            try:
                work()
            except BaseException as exc:  # handed to the waiting thread
                errors.append(exc)

        thread = threading.Thread(target=body, name=f"resist-background-{self.rank}", daemon=True)
        thread.start()

        def finish() -> None:
            thread.join()
            if errors:
                raise errors[0]

        return Pending(finish)

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        staged = self._stage(tensor)
        with self._guard("all_reduce"):
            dist.all_reduce(staged, op=dist.ReduceOp.SUM, group=self._group())
        if staged is not tensor:
            tensor.copy_(staged)

    def all_reduce_async(self, tensor: torch.Tensor, average: bool = False) -> Pending:
        if self.world_size == 1:
            return super().all_reduce_async(tensor, average)
        self._count_all_reduce(tensor)
        staged = self._stage(tensor)
        with self._guard("all_reduce"):
            work = dist.all_reduce(staged, op=dist.ReduceOp.SUM, group=self._background, async_op=True)

        def finish() -> None:
            with self._guard("all_reduce"):
                work.wait()
            if staged is not tensor:
                tensor.copy_(staged)
            if average:
                self._divide(tensor)

        return Pending(finish)

    def _broadcast(self, tensor: torch.Tensor, src: int) -> None:
        staged = self._stage(tensor)
        with self._guard("broadcast"):
            dist.broadcast(staged, src=src)
        if staged is not tensor:
            tensor.copy_(staged)

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        staged = self._stage(tensor)
        out = [torch.empty_like(staged) for _ in range(self.world_size)]
        with self._guard("all_gather"):
            dist.all_gather(out, staged)
        if staged.device != tensor.device:
            out = [t.to(tensor.device) for t in out]
        return out

    def _exchange(self, sends, recvs) -> None:
        self._post(sends, recvs, self._group())()

    def exchange_async(self, sends, recvs) -> Pending:
        """The messages are posted now (``batch_isend_irecv``) and waited for at ``wait()``; counted now."""
        sends, recvs = list(sends), list(recvs)
        if self.world_size == 1 or not (sends or recvs):
            return super().exchange_async(sends, recvs)
        self._check_and_count(sends, recvs)
        return Pending(self._post(sends, recvs, self._background))

    def _post(self, sends, recvs, group=None):
        """Post every message of an exchange at once (on ``group``, default the world); returns what
        waits for them and copies staged receive buffers back."""
        send_bufs = [(dst, self._stage(t)) for dst, t in sends]
        recv_bufs = [(src, buf, self._stage(buf)) for src, buf in recvs]
        ops = [dist.P2POp(dist.isend, t, dst, group) for dst, t in send_bufs]
        ops += [dist.P2POp(dist.irecv, staged, src, group) for src, _, staged in recv_bufs]
        with self._guard("exchange"):
            works = dist.batch_isend_irecv(ops)

        def finish() -> None:
            del send_bufs[:]  # (kept alive until here: a staged send's copy is what travels)
            with self._guard("exchange"):
                for work in works:
                    work.wait()
            for _, buf, staged in recv_bufs:
                if staged is not buf:
                    buf.copy_(staged)

        return finish

    def _barrier(self) -> None:
        with self._guard("barrier"):
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()
