"""Crash-safe file writes: a final-named file is always either the old version or the complete new one.

A single-file write goes to a temp file in the same directory (``.<name>.<random>.tmp``), is flushed and
fsynced, then ``os.replace``-d onto the final name, and the directory is fsynced so the rename survives a power
loss. On any exception the temp file is removed and the error re-raised; an ``OSError`` always names the final
path. A SIGKILL skips that cleanup, so writers of a folder should sweep stale ``.*.tmp`` entries on start
(:func:`trustlab.checkpoint.commit_checkpoint` does).

Reference:
    Lightning issue #688 / PR #689 (write a part file, then rename); NVIDIA NVFlare PR #5011 (same-directory
    temp file, fsync, ``os.replace``, fsync the parent, keep permissions); reliability-tests.md DATA-01, DATA-03.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "append_jsonl", "fsync_dir"]

_NEW_FILE_MODE = 0o666  # the process umask is applied on top, as for open(path, "w")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    The file under ``path`` keeps its permission bits if it already exists; a new file gets the usual
    ``0o666 & ~umask``.

    Args:
        path: the final file name. Its directory must exist.
        data: the complete new contents.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``data`` is not bytes-like.
        OSError: if any step fails (disk full, permission denied, missing directory). The message names
            ``path``; the previous file is untouched and no temp file is left behind.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    try:
        tmp, fd = _open_temp(path)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(path, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: the final file name.
        text: the complete new contents.
        encoding: text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``text`` is not a str.
        OSError: as :func:`atomic_write_bytes`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline) to ``path`` atomically.

    The object is serialised before the file is touched, so a value JSON cannot hold leaves the old file as
    it was. NaN and Inf are refused because they are not JSON (other readers, such as ``jq``, reject them).

    Args:
        path: the final file name.
        obj: a JSON-serialisable value.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``obj`` holds a value JSON cannot represent.
        ValueError: if ``obj`` holds NaN or Inf.
        OSError: as :func:`atomic_write_bytes`.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Append ``rows`` to a JSON-lines file, one compact object per line, and fsync it.

    Meant for append-only logs (``records.jsonl``, ``progress.jsonl``). All rows are serialised first and
    written with one call; if that write fails the file is truncated back to its previous length. If a
    previous crash left a torn last line (no trailing newline), a newline is written first so the new rows
    parse; readers should skip a final line that is not valid JSON.

    Args:
        path: the log file; created if missing. Its directory must exist.
        rows: mappings with JSON-serialisable values (no NaN/Inf).

    Returns:
        The number of rows appended.

    Raises:
        TypeError: if a row is not a mapping or holds a value JSON cannot represent.
        ValueError: if a row holds NaN or Inf.
        OSError: if the write fails; the message names ``path``.
    """
    path = Path(path)
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} must be a mapping, got {type(row).__name__}")
        lines.append(json.dumps(dict(row), sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n")
    if not lines:
        return 0
    payload = "".join(lines).encode("utf-8")
    try:
        existed = path.exists()
        with open(path, "ab") as f:
            size = f.seek(0, os.SEEK_END)
            if size and _last_byte(path) != b"\n":
                payload = b"\n" + payload
            try:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                _truncate_quietly(f, size)
                raise
        if not existed:
            fsync_dir(path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    return len(lines)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and new entries in it survive a crash (no-op where unsupported).

    Args:
        directory: an existing directory.

    Raises:
        OSError: if the directory cannot be opened or synced.
    """
    if os.name != "posix":  # Windows cannot open a directory for fsync; NTFS journals metadata itself.
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_temp(path: Path) -> tuple[Path, int]:
    """Create a fresh ``.<name>.<random>.tmp`` beside ``path``; return it and an open write descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, _NEW_FILE_MODE)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temp file beside {path}")


def _copy_mode(path: Path, tmp: Path) -> None:
    """Give ``tmp`` the permission bits of an existing ``path`` (a replace must not change them)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _truncate_quietly(f: Any, size: int) -> None:
    """Best effort: cut a partly appended file back to ``size`` (the original error matters more)."""
    try:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
    except OSError:
        pass


def _naming(exc: OSError, path: Path) -> OSError:
    """Return ``exc`` if its message names ``path``, else an OSError of the same errno that does."""
    if str(path) in str(exc):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno is None:
        return OSError(f"could not write {path}: {reason}")
    # OSError(errno, ...) picks the matching subclass (PermissionError, FileNotFoundError, ...).
    return OSError(exc.errno, f"could not write file ({reason})", str(path))
