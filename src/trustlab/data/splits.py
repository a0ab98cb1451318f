"""Seeded train/validation/test splits with a content fingerprint.

The validation set is carved from the official training set by a seeded permutation; the official test set is
left alone (only ``subset`` thins it). The fingerprint lets a resumed run detect that its data changed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from trustlab.data.load import load_dataset
from trustlab.data.registry import DatasetInfo, dataset_info

__all__ = ["Splits", "make_splits", "carve_indices", "fingerprint_of", "DEFAULT_VAL_SIZE", "DIGITS_VAL_FRACTION"]

DEFAULT_VAL_SIZE = {"mnist": 5000, "fashion-mnist": 5000, "cifar10": 5000}
DIGITS_VAL_FRACTION = 0.1  # digits is small: 10% of its training part


@dataclass(frozen=True, eq=False)
class Splits:
    """The three splits of one dataset, each an ``(x, y)`` pair.

    Attributes:
        train: Training examples (the official training set minus ``val``).
        val: Validation examples carved from the official training set.
        test: The official test set (or a seeded subset of it).
        info: The dataset's registry entry.
        seed: The seed of the carving and subset permutations.
        fingerprint: Hex sha256 of the three splits' contents (:func:`fingerprint_of`).

    Shapes:
        x: (N, C, H, W) float32 in [0, 1]; y: (N,) int64.
    """

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    info: DatasetInfo
    seed: int
    fingerprint: str


def fingerprint_of(*splits: tuple[Tensor, Tensor]) -> str:
    """Hex sha256 over each split's shapes, then its x bytes and y bytes, in the given order."""
    digest = hashlib.sha256()
    for x, y in splits:
        digest.update(f"{tuple(x.shape)}{x.dtype}{tuple(y.shape)}{y.dtype};".encode())
        digest.update(x.contiguous().numpy())
        digest.update(y.contiguous().numpy())
    return digest.hexdigest()


def carve_indices(
    n: int, val_size: int, generator: torch.Generator, *, keep: int | None = None
) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into disjoint sorted ``(train, val)`` index sets by one seeded permutation.

    The first ``val_size`` entries of the permutation are ``val`` and the rest ``train``; with ``keep``, each
    part is cut to its first ``keep`` entries (a seeded random subset) before sorting.

    Shapes:
        train: (min(n - val_size, keep),); val: (min(val_size, keep),).
    """
    perm = torch.randperm(n, generator=generator)
    train, val = perm[val_size:], perm[:val_size]
    if keep is not None:
        train, val = train[:keep], val[:keep]
    return train.sort().values, val.sort().values


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _take(xy: tuple[Tensor, Tensor], idx: Tensor) -> tuple[Tensor, Tensor]:
    return xy[0][idx], xy[1][idx]


def _check_nonempty(name: str, **parts: tuple[Tensor, Tensor]) -> None:
    for part, (x, _) in parts.items():
        if len(x) == 0:
            raise ValueError(f"dataset is empty: the {part} split of {name} has no examples")


def make_splits(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    val_size: int | None = None,
    seed: int = 0,
    subset: int | None = None,
    download: bool = True,
) -> Splits:
    """Load a dataset and split it into seeded train, validation and test parts.

    One ``torch.Generator`` seeded with ``seed`` draws, in order: the permutation of the official training set
    whose first ``val_size`` indices form ``val`` and the rest ``train``; then, only with ``subset``, the
    permutation of the test set. With ``subset=N``, ``train`` keeps the first N of its permuted indices, ``val``
    at most N, and ``test`` the first N of its permutation. Each part is returned in file order.

    Args:
        name: A key of :data:`~trustlab.data.DATASETS`.
        root: Explicit data root (see :func:`~trustlab.data.load_dataset`).
        val_size: Validation examples; default 5000, or 10% of the training part for ``"digits"``.
        seed: Seed of the permutations (an int >= 0).
        subset: Keep at most this many examples per split, for quick runs.
        download: Whether missing files may be downloaded.

    Raises:
        ValueError: Unknown ``name``; ``seed``, ``val_size`` or ``subset`` not an int in range; or a split
            that would be empty ("dataset is empty ...").
        DataError: As :func:`~trustlab.data.load_dataset`.
    """
    info = dataset_info(name)
    _check_int(seed, "seed", 0)
    if subset is not None:
        _check_int(subset, "subset", 1)
    if val_size is not None:
        _check_int(val_size, "val_size", 1)
    full_train = load_dataset(name, "train", root=root, download=download)
    test = load_dataset(name, "test", root=root, download=download)
    n = len(full_train[0])
    if val_size is None:
        val_size = DEFAULT_VAL_SIZE.get(name) or max(1, round(DIGITS_VAL_FRACTION * n))
    if val_size >= n:
        raise ValueError(f"dataset is empty: val_size={val_size} leaves no training examples of {n} in {name}")
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = carve_indices(n, val_size, generator, keep=subset)
    if subset is not None:
        test = _take(test, torch.randperm(len(test[0]), generator=generator)[:subset].sort().values)
    train, val = _take(full_train, train_idx), _take(full_train, val_idx)
    _check_nonempty(name, train=train, val=val, test=test)
    return Splits(train, val, test, info, seed, fingerprint_of(train, val, test))
