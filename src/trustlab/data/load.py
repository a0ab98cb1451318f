"""``load_dataset``: one split of a registered dataset as validated tensors."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from trustlab.data.cifar10 import load_cifar10_split
from trustlab.data.digits import load_digits_split
from trustlab.data.idx import load_idx_split
from trustlab.data.registry import DatasetInfo, dataset_info
from trustlab.data.roots import resolve_roots
from trustlab.errors import DataError

__all__ = ["load_dataset", "SPLITS"]

SPLITS = ("train", "test")


def _check_loaded(x: Tensor, y: Tensor, info: DatasetInfo, split: str) -> None:
    what = f"{info.name} {split}"
    if len(x) == 0:
        raise ValueError(f"dataset is empty: {what} has no examples")
    if x.dtype != torch.float32 or tuple(x.shape[1:]) != info.shape or y.dtype != torch.int64 or y.shape != (len(x),):
        raise DataError(
            f"{what}: loaded x {tuple(x.shape)} {x.dtype} and y {tuple(y.shape)} {y.dtype}; "
            f"expected x (N, {', '.join(map(str, info.shape))}) float32 and y (N,) int64"
        )
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
        raise DataError(f"{what}: pixel values outside [0, 1] (min={lo}, max={hi})")
    ylo, yhi = int(y.min()), int(y.max())
    if ylo < 0 or yhi >= info.num_classes:
        raise DataError(f"{what}: label {ylo if ylo < 0 else yhi} out of range [0, {info.num_classes})")


def load_dataset(
    name: str, split: str, *, root: str | os.PathLike[str] | None = None, download: bool = True
) -> tuple[Tensor, Tensor]:
    """Load one split of a registered dataset.

    Files are searched in :func:`~trustlab.data.resolve_roots` order (``root`` or ``$TRUSTLAB_DATA``, then the
    user cache). Missing files are downloaded into the first root when ``download`` is true; every official file
    is MD5-checked before it is read.

    Args:
        name: A key of :data:`~trustlab.data.DATASETS`.
        split: ``"train"`` or ``"test"``.
        root: Explicit data root (overrides ``$TRUSTLAB_DATA``).
        download: Whether missing files may be downloaded.

    Returns:
        ``(x, y)``: pixels scaled to [0, 1] and integer labels in ``[0, num_classes)``.

    Shapes:
        x: (N, C, H, W) float32; y: (N,) int64.

    Raises:
        ValueError: Unknown ``name`` or ``split``, or the split is empty.
        DataError: Files are missing (and cannot be downloaded), corrupt, truncated, fail their checksum or hold
            out-of-range labels; the message names the file and, for missing files, where to put them.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if name == "digits":
        x, y = load_digits_split(split)
    elif name == "cifar10":
        x, y = load_cifar10_split(split, resolve_roots(root), download=download)
    else:
        x, y = load_idx_split(name, split, resolve_roots(root), download=download)
    _check_loaded(x, y, info, split)
    return x, y
