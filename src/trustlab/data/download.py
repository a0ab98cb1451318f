"""Checksums and atomic downloads of official dataset files.

A download streams into a temporary file beside the destination, checks its MD5, and only then renames it
into place with ``os.replace``, so a final file name never holds a partial or unverified download. The
destination folder is created only once a mirror has answered, so an offline machine or a mistyped root gets
no new folder, and a download that fails leaves the data root as it was: the files and folders it made are
removed again.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from trustlab.errors import DataError

__all__ = ["md5_of", "verify_md5", "download_file", "download_files", "DOWNLOAD_TIMEOUT"]

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = 60.0  # seconds per connection attempt and per blocking read
_CHUNK = 1 << 20


def md5_of(path: Path) -> str:
    """Return the hex MD5 of the file at ``path``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ``DataError`` naming ``path`` unless its MD5 equals ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        raise DataError(
            f"{path}: checksum mismatch (md5 {actual}, expected {expected}); the file is corrupt, truncated or "
            "not the official one. Delete it and load again to re-download"
        )


def _open_url(url: str, timeout: float):
    """Open ``url`` for reading (a seam that tests monkeypatch to simulate being offline)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (URLs come from the fixed mirror table)


def _fetch(url: str, dest: Path, md5: str, timeout: float, created: list[Path]) -> None:
    """Download one URL to ``dest`` via a verified temporary file; leave no temporary file behind on failure.

    ``dest``'s folder is made only after the URL opened, and each folder made is appended to ``created``.
    """
    with _open_url(url, timeout) as response:
        created += _make_folders(dest.parent)  # only now is there something to write
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != md5:
                raise DataError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def download_file(urls: Sequence[str], dest: Path, md5: str, *, timeout: float = DOWNLOAD_TIMEOUT) -> None:
    """Download ``dest`` from the first of ``urls`` that yields the file with MD5 ``md5``.

    Args:
        urls: Mirrors, tried in order.
        dest: Final path. Its folder is created once a mirror answers, and removed again if the download
            fails. It only ever appears complete and verified.
        md5: Expected hex MD5 of the file.
        timeout: Seconds allowed for connecting and for each blocking read.

    Raises:
        DataError: Every mirror failed (offline, HTTP error, checksum mismatch); the message lists each reason.
    """
    download_files([(dest.name, urls, md5)], dest.parent, timeout=timeout)


def download_files(
    files: Sequence[tuple[str, Sequence[str], str]], directory: Path, *, timeout: float = DOWNLOAD_TIMEOUT
) -> None:
    """Download every ``(name, urls, md5)`` of ``files`` into ``directory``: all of them, or none.

    If one fails (or the call is interrupted), the files this call downloaded and the folders it created are
    removed, so the data root is left as it was; files that were there before are never touched.

    Raises:
        DataError: Every mirror of some file failed; the message lists each reason.
    """
    created: list[Path] = []
    done: list[Path] = []
    try:
        for name, urls, md5 in files:
            _download(urls, directory / name, md5, timeout, created)
            done.append(directory / name)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        for folder in reversed(created):  # deepest first; stop at one another process wrote into
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _download(urls: Sequence[str], dest: Path, md5: str, timeout: float, created: list[Path]) -> None:
    reasons = []
    for url in urls:
        logger.info("downloading %s to %s", url, dest)
        try:
            _fetch(url, dest, md5, timeout, created)
        except (OSError, http.client.HTTPException, DataError, ValueError) as err:
            logger.warning("download of %s failed: %s", url, err)
            reasons.append(f"{url}: {err}")
            continue
        logger.info("downloaded %s (md5 ok)", dest)
        return
    raise DataError(f"could not download {dest.name}: " + "; ".join(reasons))


def _make_folders(directory: Path) -> list[Path]:
    """Create ``directory`` and any missing parents; return the folders created, outermost first."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
    return missing[::-1]
