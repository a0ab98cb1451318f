"""Checksums and atomic downloads of official dataset files.

A download streams into a temporary file beside the destination, checks its MD5, and only then renames it
into place with ``os.replace``, so a final file name never holds a partial or unverified download.
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

__all__ = ["md5_of", "verify_md5", "download_file", "DOWNLOAD_TIMEOUT"]

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


def _fetch(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Download one URL to ``dest`` via a verified temporary file; leave nothing behind on failure."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout) as response:
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
        dest: Final path; its parent is created. It only ever appears complete and verified.
        md5: Expected hex MD5 of the file.
        timeout: Seconds allowed for connecting and for each blocking read.

    Raises:
        DataError: Every mirror failed (offline, HTTP error, checksum mismatch); the message lists each reason.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    reasons = []
    for url in urls:
        logger.info("downloading %s to %s", url, dest)
        try:
            _fetch(url, dest, md5, timeout)
        except (OSError, http.client.HTTPException, DataError, ValueError) as err:
            logger.warning("download of %s failed: %s", url, err)
            reasons.append(f"{url}: {err}")
            continue
        logger.info("downloaded %s (md5 ok)", dest)
        return
    raise DataError(f"could not download {dest.name}: " + "; ".join(reasons))
