"""CIFAR-10, binary version: reading the ``.bin`` batches and safely unpacking the official tarball.

Each record of a ``.bin`` file is 1 label byte followed by 3072 pixel bytes: the 32x32 red channel, then green,
then blue, each row-major (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html). The class names in
``batches.meta.txt`` are fixed in the registry, so that file is not needed for loading.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch import Tensor

from trustlab.data.download import download_file, verify_md5
from trustlab.data.locate import find_dir, missing_message
from trustlab.data.sources import CIFAR_BIN_DIR, CIFAR_BINS, CIFAR_TARBALL, MD5, MIRRORS, SUBDIR
from trustlab.errors import DataError

__all__ = ["read_cifar_bin", "extract_tarball", "load_cifar10_split", "RECORD_BYTES"]

logger = logging.getLogger(__name__)

RECORD_BYTES = 1 + 3 * 32 * 32
_NUM_CLASSES = 10


def read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 ``.bin`` batch.

    Shapes:
        images: (N, 3, 32, 32) uint8; labels: (N,) uint8.

    Raises:
        DataError: The size is not a multiple of 3073 bytes or a label is >= 10 (the message names the file).
    """
    data = path.read_bytes()
    if len(data) % RECORD_BYTES:
        raise DataError(
            f"{path}: size {len(data)} bytes is not a multiple of {RECORD_BYTES} (1 label byte + 3072 pixel bytes); "
            "the file is truncated or not the CIFAR-10 binary version"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        i = int(np.argmax(labels >= _NUM_CLASSES))
        raise DataError(f"{path}: label {int(labels[i])} in record {i} out of range [0, {_NUM_CLASSES})")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _check_member(member: tarfile.TarInfo, tarball: Path) -> None:
    """Reject members that could write outside the target (CVE-2007-4559, PEP 706) or are not plain files."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"{tarball}: unsafe member path {member.name!r} (escapes the extraction directory)")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{tarball}: member {member.name!r} is a link or special file; refusing to extract")


def extract_tarball(tarball: Path, dest: Path) -> Path:
    """Safely extract the CIFAR-10 tarball into ``dest`` and return ``dest / "cifar-10-batches-bin"``.

    Every member is checked before anything is written; extraction then runs with ``filter="data"`` into a
    temporary folder inside ``dest``, and the batch files are moved into place only once all are out.

    Raises:
        DataError: The archive is corrupt, has an unsafe member, or lacks the ``cifar-10-batches-bin`` folder.
    """
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, tarball)
            tar.extractall(tmp, members=members, filter="data")
        unpacked = tmp / CIFAR_BIN_DIR
        if not unpacked.is_dir():
            raise DataError(f"{tarball}: archive has no {CIFAR_BIN_DIR}/ folder")
        final = dest / CIFAR_BIN_DIR
        final.mkdir(exist_ok=True)
        for item in unpacked.iterdir():
            if item.is_file() and not (final / item.name).exists():
                item.replace(final / item.name)
        return final
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{tarball}: cannot extract ({err})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bin_dir(roots: Sequence[Path], split: str, *, download: bool) -> Path:
    """A directory holding the split's ``.bin`` files: found, unpacked from a tarball, or downloaded."""
    bins = CIFAR_BINS[split]
    found = find_dir(roots, f"{SUBDIR['cifar10']}/{CIFAR_BIN_DIR}", bins)
    if found is not None:
        return found
    tar_dir = find_dir(roots, SUBDIR["cifar10"], [CIFAR_TARBALL])
    if tar_dir is None:
        tar_dir = roots[0] / SUBDIR["cifar10"]
        searched = [r / SUBDIR["cifar10"] for r in roots]
        message = missing_message("cifar10 file(s)", [CIFAR_TARBALL], tar_dir, searched)
        message += f" (or put the extracted {', '.join(bins)} into {tar_dir / CIFAR_BIN_DIR}/)"
        if not download:
            raise DataError(message + " (download=False)")
        try:
            urls = [base + CIFAR_TARBALL for base in MIRRORS["cifar10"]]
            download_file(urls, tar_dir / CIFAR_TARBALL, MD5["cifar10"][CIFAR_TARBALL])
        except (DataError, OSError) as err:
            raise DataError(f"{message}. Download failed: {err}") from err
    verify_md5(tar_dir / CIFAR_TARBALL, MD5["cifar10"][CIFAR_TARBALL])
    logger.info("extracting %s", tar_dir / CIFAR_TARBALL)
    final = extract_tarball(tar_dir / CIFAR_TARBALL, tar_dir)
    missing = [b for b in bins if not (final / b).is_file()]
    if missing:
        raise DataError(f"{tar_dir / CIFAR_TARBALL}: archive lacks {', '.join(missing)}")
    return final


def load_cifar10_split(split: str, roots: Sequence[Path], *, download: bool) -> tuple[Tensor, Tensor]:
    """Load the train (``data_batch_1..5.bin``) or test (``test_batch.bin``) split of CIFAR-10.

    Shapes:
        x: (N, 3, 32, 32) float32 in [0, 1]; y: (N,) int64.

    Raises:
        DataError: Missing, truncated or corrupt files (the message names the file).
    """
    directory = _bin_dir(roots, split, download=download)
    parts = [read_cifar_bin(directory / name) for name in CIFAR_BINS[split]]
    x = np.concatenate([images for images, _ in parts]).astype(np.float32)  # (N, 3, 32, 32)
    x /= 255.0
    y = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)
