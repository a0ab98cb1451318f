"""Run folders: ``<run>/checkpoints/<name>/`` plus the pointer ``<run>/checkpoints/latest.json``.

:func:`commit_checkpoint` writes the directory under a temp name, renames it into place, then flips the
pointer, so ``latest.json`` always names a complete checkpoint (one writer per run folder is assumed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from trustlab.runs.atomic import atomic_write_json, fsync_dir
from trustlab.checkpoint.manifest import MODEL_FILE, _read_manifest
from trustlab.checkpoint.save import save_checkpoint
from trustlab.errors import CheckpointError

logger = logging.getLogger("trustlab.checkpoint")  # the package's name, so log lines read as before the split

LATEST_FILE = "latest.json"
CHECKPOINTS_DIR = "checkpoints"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def commit_checkpoint(
    run_dir: str | os.PathLike[str],
    name: str,
    model: nn.Module,
    *,
    arch: Mapping[str, Any],
    dataset: str,
    config: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    keep_last: int | None = 2,
    key: str | bytes | None = None,
) -> Path:
    """Crash-safely add checkpoint ``name`` to a run folder and make it the latest.

    Protocol: sweep stale ``.*.tmp`` entries; write ``checkpoints/.<name>.tmp/`` with
    :func:`save_checkpoint` (every file fsynced); rename it to ``checkpoints/<name>`` and fsync the folder;
    atomically replace ``checkpoints/latest.json`` with ``{"name": name}``; then prune to ``keep_last``. A kill
    at any point leaves ``latest.json`` naming a complete checkpoint (the old one until the flip).

    Args:
        run_dir: the run folder; ``checkpoints/`` is created inside it.
        name: the checkpoint's directory name, e.g. ``"step_000123"`` (letters, digits, ``_ . -``; not
            starting with ``.``, not ending in ``.tmp``).
        model, arch, dataset, config, state, key: as in :func:`save_checkpoint`.
        keep_last: how many checkpoints to keep (newest by creation time; the latest is always kept), or
            ``None`` to keep all.

    Returns:
        The committed checkpoint directory.

    Raises:
        ValueError: if ``name`` is not a plain directory name or ``keep_last`` < 1; as :func:`save_checkpoint`.
        FileExistsError: if checkpoint ``name`` already exists and is the latest. (An existing ``name`` that
            ``latest.json`` does not name, as left by a commit killed before its pointer flip, is replaced.)
        CheckpointError: if ``latest.json`` is corrupt.
        TypeError, OSError: as :func:`save_checkpoint`.
    """
    _check_name(name)
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last must be an int >= 1 or None, got {keep_last!r}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        root.mkdir(parents=True)
        fsync_dir(root.parent)
    _sweep_temp(root)
    final = root / name
    if final.exists():
        latest = latest_checkpoint(run_dir)
        if latest is not None and latest.name == name:
            raise FileExistsError(f"checkpoint {final} already exists and is the latest")
        # Left by a commit killed before its pointer flip (or an older checkpoint): safe to replace.
        logger.warning("replacing checkpoint %s, which latest.json does not name", final)
        _discard(root, name)
    tmp = root / f".{name}.tmp"
    try:
        save_checkpoint(tmp, model, arch=arch, dataset=dataset, config=config, state=state, key=key)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(root / LATEST_FILE, {"name": name})
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last=keep_last)
    return final


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint directory that ``<run_dir>/checkpoints/latest.json`` names, or ``None`` if there is none.

    Only the pointer, the manifest and the presence of the listed files are checked here; checksums are
    verified by :func:`load_checkpoint`.

    Args:
        run_dir: the run folder.

    Returns:
        The latest checkpoint directory, or ``None`` when no checkpoint was ever committed.

    Raises:
        CheckpointError: if ``latest.json`` is corrupt or names a missing or incomplete checkpoint.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_FILE
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_bytes().decode("utf-8"))["name"]
        _check_name(name)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer} is corrupt ({exc})") from exc
    directory = root / name
    if not directory.is_dir():
        raise CheckpointError(f"{pointer} names {name!r} but {directory} is missing")
    manifest = _read_manifest(directory)
    missing = [f for f in manifest["files"] if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(
            f"incomplete checkpoint at {directory} (named by {pointer}): missing {', '.join(missing)}"
        )
    return directory


def checkpoint_ref(directory: str | os.PathLike[str]) -> dict[str, str]:
    """What a record set names as the checkpoint it was computed on: ``{"name", "sha256"}``, the sha256 being
    that of the weights file as the manifest lists it (two checkpoints with the same weights share it).

    Raises:
        CheckpointError: the manifest is missing or invalid.
    """
    directory = Path(directory)
    return {"name": directory.name, "sha256": _read_manifest(directory)["files"][MODEL_FILE]}


def prune_checkpoints(run_dir: str | os.PathLike[str], *, keep_last: int) -> list[str]:
    """Delete all but the ``keep_last`` newest checkpoints of a run, never the one ``latest.json`` names.

    "Newest" is by the manifest's creation time (ties broken by name). Directories without a readable
    manifest are left alone (and logged). Each doomed directory is first renamed to a hidden ``.*.tmp`` name,
    so a kill mid-deletion leaves only something the next commit sweeps.

    Args:
        run_dir: the run folder.
        keep_last: how many checkpoints to keep, >= 1.

    Returns:
        The names of the deleted checkpoints.

    Raises:
        ValueError: if ``keep_last`` < 1.
        CheckpointError: if ``latest.json`` exists but is corrupt.
        OSError: if a rename or deletion fails.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    latest = latest_checkpoint(run_dir)
    dated = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        try:
            dated.append((str(_read_manifest(entry).get("created", "")), entry.name))
        except CheckpointError as exc:
            logger.warning("leaving %s alone while pruning: %s", entry, exc)
    dated.sort(reverse=True)
    doomed = [n for _, n in dated[keep_last:] if latest is None or n != latest.name]
    for name in doomed:
        _discard(root, name)
    return doomed


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(".tmp") or name == LATEST_FILE:
        raise ValueError(
            f"checkpoint name must be letters, digits, '_', '.', '-' (not starting with '.', not ending in "
            f"'.tmp'), got {name!r}"
        )


def _discard(root: Path, name: str) -> None:
    """Delete ``root/name`` by first renaming it to a hidden ``.tmp`` name (atomic), then removing that."""
    trash = root / f".{name}.deleting.tmp"
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(root / name, trash)
    fsync_dir(root)
    shutil.rmtree(trash)


def _sweep_temp(root: Path) -> None:
    """Remove ``.*.tmp`` files and folders a killed writer left behind (SIGKILL skips cleanup)."""
    for entry in root.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            logger.info("removing stale temporary %s", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
