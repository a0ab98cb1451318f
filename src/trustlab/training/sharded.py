"""Data-parallel training under torchrun: each rank trains on its slice of the single process's global batches.

Two pieces make a ``W``-rank run take the steps of a one-process run with the same ``batch_size`` (up to float
rounding in the gradient all-reduce):

- :class:`ShardedBatches` draws the global batch order exactly as the single-process loader does (the same
  seeded shuffle, ``derive_seed(seed, epoch, 0)``) and yields this rank's contiguous slice of each global batch
  (``batch_size / W`` examples) as a :class:`ShardBatch`, with the weight that turns DistributedDataParallel's
  mean over ranks into the mean over the global batch (the last batch may split unevenly). A rank whose slice of
  a short last batch is empty gets one example at weight 0, so every rank runs the same forward and backward
  passes and DDP's collectives stay in step.
- :func:`data_parallel` wraps the model in DistributedDataParallel for the training forward passes only: in
  eval mode, where every defense runs its attack (and certified defenses their bounds), the wrapper calls the
  underlying module, so the attack's forward and ``autograd.grad`` passes never reach DDP's gradient reducer
  and the ranks need not run the same number of them.
- BatchNorm: under DDP each rank normalizes its slice with the slice's own statistics, so a model with BatchNorm
  does not take one process's steps. :func:`sync_batchnorm` (the ``sync_batchnorm`` option) converts its layers to
  :class:`torch.nn.SyncBatchNorm`, which normalizes with the global batch's statistics, but only on GPU-like
  devices: :func:`check_sync_batchnorm` refuses the CPU (gloo) before anything runs.

The loop (:func:`trustlab.training.loop.train_epoch`) binds each batch's objective to a
:class:`~trustlab.threat.ShardedBall`, so random starts and noise are the rows of the global batch's draws.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from trustlab.data import make_loader
from trustlab.distributed import Distributed, shard_bounds
from trustlab.progress import progress_bar
from trustlab.seeding import derive_seed

__all__ = ["ShardBatch", "ShardedBatches", "data_parallel", "SHUFFLE_KEY", "SYNC_BATCHNORM_DEVICES",
           "has_batchnorm", "check_sync_batchnorm", "sync_batchnorm"]

SHUFFLE_KEY = 0  # the training order's stream: derive_seed(seed, epoch, 0), as in train_run
# the device types on which torch.nn.SyncBatchNorm's training forward synchronizes (it raises on any other once a
# process group exists: torch/nn/modules/batchnorm.py, SyncBatchNorm.forward, torch 2.x)
SYNC_BATCHNORM_DEVICES = ("cuda", "xpu", "hpu")


class ShardBatch(NamedTuple):
    """This rank's rows ``[start, start + len(y))`` of a global batch of ``total`` examples.

    ``weight`` multiplies the rank's mean loss before the backward pass, ``W * len(y) / total`` (0 for the
    stand-in example of an empty slice, whose statistics are not counted either).
    """

    x: Tensor
    y: Tensor
    start: int
    total: int
    weight: float


class ShardedBatches:
    """The single-process training loader's global batches, sliced for rank ``job.rank`` of ``job.world_size``.

    Args:
        x, y: the training set.
        batch_size: the global batch size; must be divisible by the world size.
        seed: the run's seed (the shuffle of epoch ``e`` is ``derive_seed(seed, e, 0)``; call :meth:`set_epoch`).
        job: this process's place in the job.

    Raises:
        ValueError: ``batch_size`` is not divisible by the world size.
    """

    def __init__(self, x: Tensor, y: Tensor, *, batch_size: int, seed: int, job: Distributed) -> None:
        if batch_size % job.world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes "
                             f"({job.world_size}): the global batch is split evenly across ranks")
        self.x, self.y, self.batch_size, self.seed, self.job = x, y, batch_size, seed, job
        self._generator = torch.Generator()
        self._order = torch.arange(len(x))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle as the single process does in ``epoch``."""
        self._generator.manual_seed(derive_seed(self.seed, epoch, SHUFFLE_KEY))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        # the single-process loader itself, on the indices, iterated as train_epoch iterates it (through the
        # progress bar, which creates one more DataLoader iterator, and so draws one more seed, before the
        # shuffle): the same order, whatever DataLoader and tqdm draw
        order = make_loader(self._order, self._order, batch_size=self.batch_size, shuffle=True,
                            generator=self._generator)
        for idx, _ in progress_bar(order, desc="order", enabled=False):
            total = len(idx)
            start, stop = shard_bounds(total, self.job.rank, self.job.world_size)
            weight = self.job.world_size * (stop - start) / total
            if stop == start:  # a short last batch with nothing for this rank: a stand-in at weight 0
                start, stop, weight = 0, 1, 0.0
            mine = idx[start:stop]
            yield ShardBatch(self.x[mine], self.y[mine], start, total, weight)


class _TrainForward(nn.Module):
    """DistributedDataParallel in train mode (the loss's forward passes), the plain module in eval mode."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        super().__init__()
        self.ddp = ddp

    def forward(self, x: Tensor) -> Tensor:
        return self.ddp(x) if self.training else self.ddp.module(x)


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` for :func:`~trustlab.training.loop.train_epoch` in a distributed job: its train-mode forward
    passes go through DistributedDataParallel (gradients averaged over the ranks in the backward pass), its
    eval-mode ones (attacks, bounds) through ``model`` itself. The parameters are ``model``'s own, so the
    optimizer and checkpoints keep using ``model``. Rank 0's weights are broadcast to every rank here."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return _TrainForward(nn.parallel.DistributedDataParallel(model, device_ids=ids))


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (of any dimension, SyncBatchNorm included)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_sync_batchnorm(device: torch.device, world_size: int) -> None:
    """Refuse ``sync_batchnorm`` on ``world_size`` > 1 processes on a device where SyncBatchNorm cannot sync.

    Raises:
        ValueError: more than one process on a device type not in :data:`SYNC_BATCHNORM_DEVICES` (the CPU).
    """
    device = torch.device(device)
    if world_size > 1 and device.type not in SYNC_BATCHNORM_DEVICES:
        raise ValueError(f"sync_batchnorm on {world_size} processes needs a GPU: torch.nn.SyncBatchNorm "
                         f"synchronizes batch statistics only on {list(SYNC_BATCHNORM_DEVICES)} devices, and this "
                         f"run's device is {str(device)!r}; drop --sync-batchnorm (each rank then normalizes with "
                         "its own slice's statistics) or train on cuda")


def sync_batchnorm(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` with its BatchNorm layers converted to :class:`torch.nn.SyncBatchNorm` for a ``world_size``-process
    job on ``device``; ``model`` itself on one process (where batch statistics are the global batch's already).

    The conversion keeps the parameter and buffer objects (an optimizer over ``model.parameters()`` still trains
    them) and the ``state_dict`` keys, so checkpoints load into the plain registry model. SyncBatchNorm only
    synchronizes in training mode; in eval mode (attacks, bounds) it uses the running statistics, as BatchNorm.

    Raises:
        ValueError: as :func:`check_sync_batchnorm`.
    """
    check_sync_batchnorm(device, world_size)
    if world_size == 1:
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
