"""``make_loader``: a seeded mini-batch iterator over in-memory tensors."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from trustlab.validation import check_positive_int

__all__ = ["make_loader"]


def make_loader(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
    with_indices: bool = False,
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
    dataset = TensorDataset(x, y, torch.arange(len(x))) if with_indices else TensorDataset(x, y)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, sampler=sampler,
                      num_workers=0)
