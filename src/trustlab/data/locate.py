"""Find a dataset's files in the data roots, or download them into the first root (which gets a dataset folder
only when a download writes into it, and keeps none when the download fails)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from trustlab.data.download import download_files
from trustlab.data.roots import DATA_ENV
from trustlab.data.sources import MD5, MIRRORS
from trustlab.errors import DataError

__all__ = ["find_dir", "ensure_files", "missing_message"]

logger = logging.getLogger(__name__)


def find_dir(roots: Sequence[Path], subdir: str, files: Sequence[str]) -> Path | None:
    """Return the first ``root / subdir`` that holds every one of ``files``, or ``None``."""
    for root in roots:
        directory = root / subdir
        if all((directory / f).is_file() for f in files):
            return directory
    return None


def missing_message(what: str, files: Sequence[str], directory: Path, searched: Sequence[Path]) -> str:
    """The instructions given when files are missing: which files to put in which directory."""
    return (
        f"{what} not found. Put the file(s) {', '.join(files)} into {directory}/ (the official files; their MD5 is "
        f"checked), or set {DATA_ENV} to a data root that has them under its {directory.name}/ folder. "
        f"Searched: {', '.join(str(p) for p in searched)}"
    )


def ensure_files(dataset: str, subdir: str, files: Sequence[str], roots: Sequence[Path], *, download: bool) -> Path:
    """Return a directory holding all ``files`` of ``dataset``, downloading missing ones into the first root.

    Args:
        dataset: Key of :data:`~trustlab.data.sources.MD5` and :data:`~trustlab.data.sources.MIRRORS`.
        subdir: Folder below a data root, e.g. ``"mnist"``.
        files: File names that must all be present.
        roots: Data roots in search order (:func:`~trustlab.data.roots.resolve_roots`).
        download: Whether missing files may be downloaded.

    Raises:
        DataError: The files are missing and ``download`` is false or the download failed; the message says
            which files to put in which directory.
    """
    found = find_dir(roots, subdir, files)
    if found is not None:
        logger.debug("using %s files in %s", dataset, found)
        return found
    target = roots[0] / subdir
    missing = [f for f in files if not (target / f).is_file()]
    message = missing_message(f"{dataset} file(s)", missing, target, [r / subdir for r in roots])
    if not download:
        raise DataError(message + " (download=False)")
    try:  # all or none: a failure leaves no folder or file behind in the root
        download_files([(name, [base + name for base in MIRRORS[dataset]], MD5[dataset][name]) for name in missing],
                       target)
    except (DataError, OSError) as err:
        raise DataError(f"{message}. Download failed: {err}") from err
    return target
