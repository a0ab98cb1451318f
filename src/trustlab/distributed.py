"""Distributed runs on PyTorch's own engine: torchrun starts the processes, ``torch.distributed`` connects them.

``torchrun --nproc_per_node=N -m trustlab train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each
process's environment; :func:`distributed` reads them, joins the process group (gloo on the CPU, NCCL on CUDA)
and yields a :class:`Distributed` value naming this process's place in the job. Without those variables, or with
``WORLD_SIZE=1``, it yields :data:`SINGLE` and creates no process group: one process runs exactly the
single-process code path.

The collectives (:meth:`Distributed.barrier`, :meth:`Distributed.all_gather_object`, ...) are no-ops on one process,
so callers need not branch. :func:`shard_bounds` splits a global batch into the contiguous per-rank slices that
training (:mod:`trustlab.training.sharded`) and sharded evaluation use.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

__all__ = ["Distributed", "SINGLE", "from_env", "init_distributed", "shutdown", "distributed", "shard_bounds",
           "ENV_VARS"]

log = logging.getLogger(__name__)

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets in every worker's environment
_TIMEOUT = timedelta(minutes=30)  # a collective that waits longer than this fails instead of hanging


@dataclass(frozen=True)
class Distributed:
    """This process's place in a distributed job: ``rank`` of ``world_size``, ``local_rank`` on its node.

    ``backend`` is the process group's (``"gloo"``, ``"nccl"``), or ``None`` for a single process, on which every
    collective below returns at once (a list of the one value, the value itself).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "world_size" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'world_size' else 0}, got {value!r}")
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size ({self.world_size}), got {self.rank}")

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process (and so a process group)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes run folders and logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``device`` for this process: a bare ``cuda`` becomes ``cuda:<local_rank>`` in a distributed job."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            torch.distributed.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable; tensors are moved to the CPU first), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, _to_cpu(obj))
        return out

    def broadcast_object(self, obj: Any, *, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (what the other ranks pass is ignored)."""
        if not self.enabled:
            return obj
        box = [_to_cpu(obj) if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's ``tensor`` (the same shape and dtype on every rank), in rank order."""
        if not self.enabled:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, tensor.contiguous())
        return out


SINGLE = Distributed()


def from_env(environ: Mapping[str, str] | None = None) -> Distributed:
    """The job described by torchrun's variables in ``environ`` (default ``os.environ``); :data:`SINGLE` without.

    Raises:
        ValueError: only some of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` are set, or one is not an int.
    """
    environ = os.environ if environ is None else environ
    present = [k for k in ENV_VARS if k in environ]
    if not present:
        return SINGLE
    if len(present) != len(ENV_VARS):
        missing = [k for k in ENV_VARS if k not in environ]
        raise ValueError(f"distributed environment incomplete: {present} set but {missing} missing; "
                         "start distributed runs with torchrun")
    try:
        rank, world, local = (int(environ[k]) for k in ENV_VARS)
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                         f"{[environ[k] for k in ENV_VARS]}") from None
    return Distributed(rank=rank, world_size=world, local_rank=local)


def init_distributed(device: torch.device | str = "cpu", *, environ: Mapping[str, str] | None = None,
                     timeout: timedelta = _TIMEOUT) -> Distributed:
    """Join the job torchrun started (gloo for a CPU ``device``, NCCL for CUDA); :data:`SINGLE` for one process.

    Raises:
        ValueError: an incomplete torchrun environment (see :func:`from_env`).
    """
    job = from_env(environ)
    if not job.enabled:
        return SINGLE
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(job.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=timeout)
    log.debug("rank %d of %d joined the %s process group", job.rank, job.world_size, backend)
    return Distributed(rank=job.rank, world_size=job.world_size, local_rank=job.local_rank, backend=backend)


def shutdown(job: Distributed, *, wait: bool = True) -> None:
    """Leave the process group of ``job`` (nothing for a single process); with ``wait``, first wait for every
    rank to get here, so that no rank tears its connections down while another still receives on them (gloo
    then aborts that rank). Objects left in reference cycles (a DistributedDataParallel wrapper and its hooks)
    are collected first, while the group they hold is still alive."""
    if job.enabled and torch.distributed.is_initialized():
        gc.collect()
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def distributed(device: torch.device | str = "cpu", *,
                environ: Mapping[str, str] | None = None) -> Iterator[Distributed]:
    """:func:`init_distributed` for the ``with`` block, then :func:`shutdown`; when the block raises, without
    waiting for the other ranks (which torchrun stops once this process exits with the error)."""
    job = init_distributed(device, environ=environ)
    try:
        yield job
    except BaseException:
        shutdown(job, wait=False)
        raise
    shutdown(job)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[start, stop)`` of ``n`` items split over ``world_size`` ranks: sizes
    differ by at most one, the first ranks taking the larger shares; a rank may get none when ``n < world_size``."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def _to_cpu(obj: Any) -> Any:
    """``obj`` with its tensors (also inside dicts, lists and tuples) on the CPU, so any backend can pickle it."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
