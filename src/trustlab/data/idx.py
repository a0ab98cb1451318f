"""MNIST and Fashion-MNIST: strict reading of the IDX gzip files.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of a 4-byte magic number
(two zero bytes, a type code, the number of dimensions) and one 4-byte size per dimension, then the values in
row-major order. Unsigned-byte images have magic 2051 (three dimensions N, H, W); labels have 2049 (one, N).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from trustlab.data.download import verify_md5
from trustlab.data.locate import ensure_files
from trustlab.data.registry import dataset_info
from trustlab.data.sources import IDX_FILES, MD5, SUBDIR
from trustlab.errors import DataError

__all__ = ["read_idx", "load_idx_split", "IMAGES_MAGIC", "LABELS_MAGIC"]

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a valid gzip file or truncated ({err})") from err


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzip-compressed unsigned-byte IDX file, checking every header field and the exact length.

    Args:
        path: The ``.gz`` file.
        magic: Expected magic number, :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`.

    Returns:
        A read-only ``uint8`` array with the header's dimensions.

    Raises:
        DataError: Bad gzip stream, wrong magic number, or a byte length other than the header promises.
    """
    data = _gunzip(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    (found,) = struct.unpack_from(">i", data, 0)
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number {found}, expected {magic}")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX data {problem}: {len(data)} bytes, header {dims} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_pair(images: np.ndarray, labels: np.ndarray, paths: Sequence[Path], hw: tuple[int, int]) -> None:
    image_path, label_path = paths
    if images.shape[1:] != hw:
        raise DataError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, expected {hw[0]}x{hw[1]}")
    if len(images) != len(labels):
        raise DataError(
            f"{label_path}: holds {len(labels)} labels but {image_path} holds {len(images)} images (count mismatch)"
        )


def _check_label_values(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        i = int(np.argmax(labels >= num_classes))
        raise DataError(f"{path}: label {int(labels[i])} at index {i} out of range [0, {num_classes})")


def load_idx_split(name: str, split: str, roots: Sequence[Path], *, download: bool) -> tuple[Tensor, Tensor]:
    """Load one split of an IDX dataset (``"mnist"`` or ``"fashion-mnist"``), MD5-checking both files.

    Shapes:
        x: (N, 1, 28, 28) float32 in [0, 1]; y: (N,) int64.

    Raises:
        DataError: Missing, corrupt or inconsistent files (the message names the file).
    """
    info = dataset_info(name)
    files = IDX_FILES[split]
    directory = ensure_files(name, SUBDIR[name], files, roots, download=download)
    paths = [directory / f for f in files]
    for path in paths:
        verify_md5(path, MD5[name][path.name])
    images, labels = read_idx(paths[0], IMAGES_MAGIC), read_idx(paths[1], LABELS_MAGIC)
    _check_pair(images, labels, paths, info.shape[1:])
    _check_label_values(labels, info.num_classes, paths[1])
    x = images.astype(np.float32)  # a writable copy; (N, H, W)
    x /= 255.0
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
