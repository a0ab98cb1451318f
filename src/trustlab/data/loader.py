"""``make_loader``: a seeded mini-batch iterator over in-memory tensors; ``place_training_set``: where they live.

Each batch is gathered with one indexing per tensor (not one per example and a stack), so a training set kept on
the GPU is batched there without a kernel launch per example; the batches are the same values in the same order.
A training set that does not fit on the GPU stays in pinned host memory, copied to the device asynchronously.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from trustlab.validation import check_positive_int

__all__ = ["make_loader", "place_training_set", "data_placement", "DEVICE_DATA_FRACTION"]

DEVICE_DATA_FRACTION = 0.25  # a training set goes onto the GPU if it takes at most this share of its free memory


class _Rows(TensorDataset):
    """A ``TensorDataset`` that the ``DataLoader`` fetches a batch at a time (``__getitems__``)."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.tensors[0].device)
        return tuple(t[idx] for t in self.tensors)


def _batch(rows: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return rows  # already a batch: _Rows gathered it


def make_loader(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    with_indices: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """Wrap ``(x, y)`` in a single-process ``DataLoader``.

    Shuffling draws only from ``generator`` (never the global RNG), so the batch order is reproducible and
    resumable from the generator's state.

    Args:
        x: Inputs.
        y: Labels, one per input.
        batch_size: Examples per batch (the last batch may be smaller).
        shuffle: Reshuffle every epoch.
        generator: Source of the shuffle order; required when ``shuffle`` is true.
        sampler: The order of the examples instead of ``shuffle`` (e.g. a ``DistributedSampler`` that gives each
            rank its share); ``shuffle`` must then be false.
        with_indices: yield ``(x, y, idx)`` with each example's index in ``x`` (defenses such as spectral
            signatures need to know which training examples a batch holds).
        pin_memory: put each batch of host tensors in pinned memory, so its copy to a CUDA device can be
            asynchronous (``.to(device, non_blocking=True)``); only where CUDA is used.

    Shapes:
        x: (N, *D); y: (N,).

    Raises:
        ValueError: ``batch_size < 1``, ``len(x) != len(y)``, ``shuffle`` without a ``generator``, or ``shuffle``
            with a ``sampler``.
        TypeError: ``batch_size`` is not an int.
    """
    check_positive_int(batch_size, "batch_size")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a torch.Generator (trustlab never shuffles with the global RNG)")
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler, not both (the sampler decides the order)")
    tensors = (x, y, torch.arange(len(x), device=x.device)) if with_indices else (x, y)
    return DataLoader(_Rows(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator, sampler=sampler,
                      num_workers=0, collate_fn=_batch, pin_memory=pin_memory)


def data_placement(nbytes: int, device: torch.device, *, free_bytes: int | None = None) -> str:
    """Where a training set of ``nbytes`` should live for training on ``device``: ``"device"`` (a CUDA device
    with at least ``nbytes / DEVICE_DATA_FRACTION`` bytes free: CIFAR-10's 45,000 float32 training images take
    553 MB), ``"pinned"`` (a CUDA device it does not fit on) or ``"host"`` (the CPU).

    Args:
        free_bytes: the device's free memory; ``None`` asks CUDA (``torch.cuda.mem_get_info``).
    """
    if device.type != "cuda":
        return "host"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "device" if nbytes <= DEVICE_DATA_FRACTION * free_bytes else "pinned"


def place_training_set(x: Tensor, y: Tensor, device: torch.device) -> tuple[Tensor, Tensor, bool]:
    """``(x, y)`` moved to ``device`` if they fit there (:func:`data_placement`), and whether the loader should pin
    its batches (they stay on the host of a CUDA device). On the CPU: ``(x, y, False)`` as given."""
    where = data_placement(x.nbytes + y.nbytes, device)
    if where == "device":
        return x.to(device), y.to(device), False
    return x, y, where == "pinned"
