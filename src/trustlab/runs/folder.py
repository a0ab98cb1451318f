"""Run folders that never lose or mix data: trustlab's marker, one writer per folder, a safe overwrite.

A folder is a trustlab run only if it carries :data:`MARKER` (``trustlab-run.json``, written by trustlab with a
schema version), or, for folders written before the marker existed, a trustlab ``config.json`` together with
``checkpoints/latest.json`` (a *legacy* run). Every writing command holds :func:`run_lock` on the folder
(``fcntl.flock`` on ``.trustlab.lock``): the kernel drops the lock when its process dies, so a lock file left by a
killed process is simply taken over. ``--overwrite`` builds the new run in a hidden sibling
(:func:`staging_folder`) and swaps it in with :func:`replace_run` once it is complete, and removes only the
entries trustlab writes (:data:`RUN_ENTRIES`), never the current directory or a parent of it.

Reference: reliability-tests.md DATA-09 (no clobbering); issue 8, findings 1-3.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trustlab.errors import RunInUseError
from trustlab.runs.atomic import atomic_write_json, fsync_dir

try:  # POSIX only; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["MARKER", "LOCK", "SCHEMA", "RUN_ENTRIES", "write_marker", "read_marker", "is_run", "is_legacy_run",
           "run_lock", "check_overwritable", "staging_folder", "replace_run", "commit_folder", "remove_run_entries"]

log = logging.getLogger(__name__)

MARKER = "trustlab-run.json"
LOCK = ".trustlab.lock"
SCHEMA = 1
_FORMAT = "trustlab-run"
# what trustlab writes at the top of a run folder; --overwrite removes these and nothing else
RUN_ENTRIES = frozenset({MARKER, LOCK, "config.json", "data_transform.json", "progress.jsonl", "records.jsonl",
                         "summary.json", "checkpoints", "best", "attacks"})


def write_marker(folder: str | os.PathLike[str], *, kind: str = "train") -> Path:
    """Mark ``folder`` as a trustlab run (atomically): ``{"format", "schema", "kind", "created", "trustlab"}``."""
    from trustlab import __version__

    return atomic_write_json(Path(folder) / MARKER, {
        "format": _FORMAT, "schema": SCHEMA, "kind": kind, "trustlab": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of ``folder``, or ``None`` when it has none or it is not trustlab's.

    Raises:
        ValueError: the marker is trustlab's but of a newer schema than this version reads.
    """
    path = Path(folder) / MARKER
    try:
        marker = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != _FORMAT or not isinstance(marker.get("schema"), int):
        return None
    if marker["schema"] > SCHEMA:
        raise ValueError(f"{path} has schema {marker['schema']}; this trustlab reads up to {SCHEMA}: upgrade it")
    return marker


def is_legacy_run(folder: str | os.PathLike[str]) -> bool:
    """A run written before the marker existed: a trustlab ``config.json`` and ``checkpoints/latest.json``."""
    folder = Path(folder)
    if not (folder / "checkpoints" / "latest.json").is_file():
        return False
    try:
        saved = json.loads((folder / "config.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(saved, dict) and all(isinstance(saved.get(k), dict) for k in ("config", "identity", "versions"))


def is_run(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a trustlab run folder (marked, or legacy)."""
    return read_marker(folder) is not None or is_legacy_run(folder)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of the run folder ``folder`` (which must exist) for the ``with`` block.

    Raises:
        RunInUseError: another process holds it; the message names its PID.
        OSError: the lock file cannot be created.
    """
    folder = Path(folder)
    fd = _acquire(folder / LOCK, folder)
    try:
        yield folder
    finally:
        try:  # an empty lock file: nobody holds it (a killed holder leaves its PID, and no lock)
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the flock


def _acquire(path: Path, folder: Path) -> int:
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunInUseError(f"run {folder} is in use by PID {pid or '?'}; wait for it to finish") from None
        try:  # the lock file may have been swapped away (replace_run) between open and flock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        old = _read_pid(fd)
        if old and old != os.getpid():
            log.info("taking over the lock of %s left by PID %s, which no longer holds it", folder, old)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
    raise RunInUseError(f"run {folder} keeps changing under its lock; another process is replacing it")


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def check_overwritable(folder: str | os.PathLike[str]) -> None:
    """Refuse to overwrite what is not a trustlab run, holds files trustlab did not write, or holds the
    current directory.

    Raises:
        FileExistsError: with the reason and the folder.
    """
    folder = Path(folder)
    real, cwd = folder.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise FileExistsError(f"refusing to overwrite {folder}: it is the current directory or one of its parents")
    if not is_run(folder):
        raise FileExistsError(f"refusing to overwrite {folder}: it is not a trustlab run folder (no {MARKER})")
    foreign = sorted(e.name for e in folder.iterdir() if not _ours(e.name))
    if foreign:
        raise FileExistsError(f"refusing to overwrite {folder}: it holds files trustlab did not write {foreign}; "
                              "move them away first")


def staging_folder(folder: str | os.PathLike[str]) -> Path:
    """A new, empty hidden sibling of ``folder`` to build its replacement in. Stale ones that no process holds
    (left by a killed overwrite) are removed first."""
    folder = Path(folder)
    for stale in folder.parent.glob(f".{folder.name}.new-*.tmp"):
        try:
            with run_lock(stale):
                remove_run_entries(stale)
        except (RunInUseError, OSError) as exc:
            log.info("leaving %s alone: %s", stale, exc)
    staged = folder.parent / f".{folder.name}.new-{secrets.token_hex(4)}.tmp"
    staged.mkdir()
    return staged


def replace_run(folder: str | os.PathLike[str], staged: str | os.PathLike[str]) -> None:
    """Swap the complete new run ``staged`` in for ``folder``, then remove the old run's trustlab entries.

    On Linux the swap is one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames (a crash between them
    leaves both runs intact under hidden names beside ``folder``).
    """
    folder, staged = Path(folder), Path(staged)
    if not _exchange(staged, folder):
        old = folder.parent / f".{folder.name}.old-{secrets.token_hex(4)}.tmp"
        os.rename(folder, old)
        os.rename(staged, folder)
        staged = old
    fsync_dir(folder.parent)
    remove_run_entries(staged)  # now the old run


def commit_folder(staged: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put the complete folder ``staged`` at ``final`` in one step (an attack result, say), replacing and then
    deleting a previous ``final`` wholly: use it only for folders that trustlab alone writes."""
    staged, final = Path(staged), Path(final)
    if final.exists():
        if not _exchange(staged, final):
            old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}.tmp"
            os.rename(final, old)
            os.rename(staged, final)
            staged = old
        fsync_dir(final.parent)
        shutil.rmtree(staged)
    else:
        os.rename(staged, final)
        fsync_dir(final.parent)


def remove_run_entries(folder: str | os.PathLike[str]) -> None:
    """Delete the entries trustlab writes in ``folder``, then ``folder`` itself if nothing else is left."""
    folder = Path(folder)
    for entry in folder.iterdir():
        if not _ours(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        log.warning("kept %s: it holds files trustlab did not write", folder)


def _ours(name: str) -> bool:
    """An entry trustlab writes, or the temp file of an atomic write that a kill left behind."""
    return name in RUN_ENTRIES or (name.startswith(".") and name.endswith(".tmp"))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {a} with {b}: {os.strerror(err)}")
