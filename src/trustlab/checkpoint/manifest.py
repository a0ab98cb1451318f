"""The checkpoint format: its version and file names, ``manifest.json`` and the checksums it lists.

The manifest is written last by :func:`~trustlab.checkpoint.save_checkpoint`; reading one back checks its format
version, its own sha256, the files it lists and its arch, then reads every listed file and checks its sha256,
before anything is parsed. See :mod:`trustlab.checkpoint` for the whole format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trustlab.errors import CheckpointError
from trustlab.models import MODELS, model_names

logger = logging.getLogger("trustlab.checkpoint")  # the package's name, so log lines read as before the split

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_KNOWN_FILES = (MODEL_FILE, STATE_FILE)
_SELF_HASH_KEY = "manifest_sha256"


def canonical_sha256(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``: sorted keys, no spaces, UTF-8, no NaN/Inf.

    Used for ``config_hash`` (so a resume can refuse a changed config) and for the manifest's own checksum.

    Raises:
        TypeError: if ``obj`` holds a value JSON cannot represent.
        ValueError: if ``obj`` holds NaN or Inf.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a checkpoint's manifest and every file's checksum without parsing weights or state.

    Args:
        directory: the checkpoint directory.

    Returns:
        The verified manifest.

    Raises:
        CheckpointError: as :func:`load_checkpoint` for a missing, incomplete, newer-format or altered checkpoint.
    """
    manifest, _ = _verify(Path(directory), None)
    return manifest


def _verify(directory: Path, expected_arch: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read the manifest and all listed files; return the manifest and the exact bytes that were hashed."""
    manifest = _read_manifest(directory)
    if expected_arch is not None:
        _check_expected_arch(manifest["arch"], expected_arch, directory)
    missing = [name for name in manifest["files"] if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"incomplete checkpoint at {directory}: missing {', '.join(missing)}")
    blobs = {}
    for name, digest in manifest["files"].items():
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"checksum mismatch for {path}: the file was modified or is corrupt")
        blobs[name] = data
    _warn_if_other_torch(manifest, directory)
    return manifest, blobs


def _read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and validate ``manifest.json`` (format version, self-checksum, files, arch)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"no valid checkpoint found at {directory}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"no valid checkpoint found at {directory}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"no valid checkpoint found at {directory}: {path} is corrupt ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CheckpointError(f"no valid checkpoint found at {directory}: {path} is not a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this trustlab (reads up to {FORMAT_VERSION}); "
            "upgrade trustlab to load it"
        )
    body = {k: v for k, v in manifest.items() if k != _SELF_HASH_KEY}
    if manifest.get(_SELF_HASH_KEY) != canonical_sha256(body):
        raise CheckpointError(f"checksum mismatch for {path}: the manifest was modified or is corrupt")
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{path} does not list {MODEL_FILE}")
    unknown = [name for name in files if name not in _KNOWN_FILES]
    if unknown or not all(isinstance(d, str) for d in files.values()):
        raise CheckpointError(f"{path} lists unknown files {unknown} or malformed checksums")
    _check_manifest_arch(manifest.get("arch"), path)
    return manifest


def _check_manifest_arch(arch: Any, path: Path) -> None:
    if not isinstance(arch, dict) or not {"name", "in_shape", "num_classes"} <= arch.keys():
        raise CheckpointError(f"{path} has no valid arch (need name, in_shape, num_classes): {arch!r}")
    if arch["name"] not in MODELS:
        raise CheckpointError(f"{path} names unknown architecture {arch['name']!r}; known: {model_names()}")
    shape, k = arch["in_shape"], arch["num_classes"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)):
        raise CheckpointError(f"{path} has an invalid in_shape {shape!r}")
    if type(k) is not int or k < 2:
        raise CheckpointError(f"{path} has an invalid num_classes {k!r}")


def _check_expected_arch(arch: dict[str, Any], expected: Mapping[str, Any], directory: Path) -> None:
    want = json.loads(json.dumps(dict(expected)))  # tuples -> lists, as stored
    differing = [k for k in want if k not in arch or arch[k] != want[k]]
    if differing:
        details = "; ".join(f"{k}: checkpoint {arch.get(k)!r}, expected {want[k]!r}" for k in differing)
        raise CheckpointError(
            f"checkpoint at {directory} is for another architecture; differing keys {differing} ({details})"
        )


def _warn_if_other_torch(manifest: Mapping[str, Any], directory: Path) -> None:
    versions = manifest.get("versions")
    saved = str(versions.get("torch", "")) if isinstance(versions, dict) else ""
    if saved.split(".")[:2] != str(torch.__version__).split(".")[:2]:
        logger.warning(
            "checkpoint %s was saved with torch %s, loading with %s: results may not be bitwise reproducible",
            directory,
            saved or "(unknown)",
            torch.__version__,
        )


def _trustlab_version() -> str:
    from trustlab import __version__  # imported late: trustlab/__init__ may import this module

    return __version__


def _versions() -> dict[str, str]:
    return {"trustlab": _trustlab_version(), "torch": str(torch.__version__), "python": platform.python_version()}
