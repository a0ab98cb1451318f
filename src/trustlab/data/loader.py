"""``make_loader``: a seeded mini-batch iterator over in-memory tensors."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from trustlab.validation import check_positive_int

__all__ = ["make_loader"]


def make_loader(
    x: Tensor, y: Tensor, *, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
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

    Shapes:
        x: (N, *D); y: (N,).

    Raises:
        ValueError: ``batch_size < 1``, ``len(x) != len(y)``, or ``shuffle`` without a ``generator``.
        TypeError: ``batch_size`` is not an int.
    """
    check_positive_int(batch_size, "batch_size")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if shuffle and generator is None:
        raise ValueError("shuffle=True needs a torch.Generator (trustlab never shuffles with the global RNG)")
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
