"""The checkpoint format: its version and file names, ``manifest.json`` and the checksums it lists.

The manifest is written last by :func:`~trustlab.checkpoint.save_checkpoint`; reading one back checks its format
version, its own sha256, the files it lists and its arch, then checks every listed file's size (when the
manifest records sizes, as it has since they were added) before reading it, and its sha256, before anything is
parsed. See :mod:`trustlab.checkpoint` for the whole format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trustlab.checkpoint.signing import check_signature, resolve_key
from trustlab.errors import CheckpointError
from trustlab.models import MODELS, model_names

logger = logging.getLogger("trustlab.checkpoint")  # the package's name, so log lines read as before the split

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_KNOWN_FILES = (MODEL_FILE, STATE_FILE)
_SELF_HASH_KEY = "manifest_sha256"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_IN_DIM = 4096
"""The largest channel count, height or width a checkpoint's ``in_shape`` may have."""
MAX_INPUT_SIZE = 3 * 1024 * 1024
"""The most values one input (``C * H * W``) may have: a 3 x 1024 x 1024 image."""
MAX_NUM_CLASSES = 100_000
_READ_BLOCK = 1 << 20  # verify_checkpoint hashes files in blocks of 1 MiB
_MANIFEST_LIMIT = 16 << 20  # a manifest is a few kB; a larger one is refused before it is parsed


def canonical_sha256(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``: sorted keys, no spaces, UTF-8, no NaN/Inf.

    Used for ``config_hash`` (so a resume can refuse a changed config) and for the manifest's own checksum.

    Raises:
        TypeError: if ``obj`` holds a value JSON cannot represent.
        ValueError: if ``obj`` holds NaN or Inf.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def verify_checkpoint(directory: str | os.PathLike[str], *, key: str | bytes | None = None) -> dict[str, Any]:
    """Check a checkpoint's manifest and every file's checksum without parsing weights or state.

    Args:
        directory: the checkpoint directory.
        key: a signing key (else ``$TRUSTLAB_SIGNING_KEY`` if set): the manifest must carry a signature made
            with it (:mod:`trustlab.checkpoint.signing`).

    Returns:
        The verified manifest.

    Raises:
        CheckpointError: as :func:`load_checkpoint` for a missing, incomplete, newer-format, altered or (with a
            key) unsigned or wrongly signed checkpoint.
    """
    manifest, _ = _verify(Path(directory), None, keep=False, key=key)
    return manifest


def _verify(
    directory: Path, expected_arch: Mapping[str, Any] | None, *, keep: bool = True, key: str | bytes | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read the manifest, check its signature (with a key), then every listed file's size and sha256; return the
    manifest and, when ``keep``, the exact bytes that were hashed (otherwise files are hashed in blocks)."""
    secret = resolve_key(key)
    manifest = _read_manifest(directory)
    if secret is not None:  # the signed manifest lists every file's sha256, so the files are covered too
        check_signature(manifest, secret, directory / MANIFEST_FILE, _SELF_HASH_KEY)
    if expected_arch is not None:
        _check_expected_arch(manifest["arch"], expected_arch, directory)
    missing = [name for name in manifest["files"] if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"incomplete checkpoint at {directory}: missing {', '.join(missing)}")
    sizes = manifest.get("sizes", {})  # absent in manifests written before sizes were recorded
    blobs = {}
    for name, digest in manifest["files"].items():
        data = _read_listed(directory / name, digest, sizes.get(name), keep=keep)
        if data is not None:
            blobs[name] = data
    _warn_if_other_torch(manifest, directory)
    return manifest, blobs


def _read_listed(path: Path, digest: str, size: int | None, *, keep: bool) -> bytes | None:
    """Check ``path`` against the manifest's ``size`` (before reading anything) and ``digest``.

    Returns the bytes read when ``keep`` (one read, at most ``size + 1`` bytes, so a file that grew is caught
    without reading all of it), else ``None`` after hashing in blocks of :data:`_READ_BLOCK` bytes.
    """
    try:
        with open(path, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            if size is not None and actual != size:
                raise CheckpointError(f"size mismatch for {path}: {actual} bytes, the manifest lists {size}: the "
                                      "file was modified or is corrupt")
            limit = -1 if size is None else size + 1
            if keep:
                data = f.read(limit)
                sha = hashlib.sha256(data)
            else:
                data, sha, read = None, hashlib.sha256(), 0
                while block := f.read(_READ_BLOCK):
                    sha.update(block)
                    read += len(block)
                    if size is not None and read > size:
                        break
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if sha.hexdigest() != digest:
        raise CheckpointError(f"checksum mismatch for {path}: the file was modified or is corrupt")
    return data


def _read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and validate ``manifest.json`` (format version, self-checksum, files, arch)."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"no valid checkpoint found at {directory}: not a directory")
    if not path.is_file():
        raise CheckpointError(f"no valid checkpoint found at {directory}: {MANIFEST_FILE} is missing")
    try:
        with open(path, "rb") as f:  # read(n) allocates n bytes: ask for no more than the file holds
            text = f.read(min(os.fstat(f.fileno()).st_size, _MANIFEST_LIMIT) + 1)
        if len(text) > _MANIFEST_LIMIT:
            raise CheckpointError(f"no valid checkpoint found at {directory}: {path} is larger than "
                                  f"{_MANIFEST_LIMIT} bytes")
        manifest = json.loads(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
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
    if unknown or not all(_is_sha256(d) for d in files.values()):
        raise CheckpointError(f"{path} lists unknown files {unknown} or malformed checksums")
    sizes = manifest.get("sizes", files)  # absent in manifests written before sizes were recorded
    if "sizes" in manifest and not (isinstance(sizes, dict) and sizes.keys() == files.keys()
            and all(type(n) is int and n >= 0 for n in sizes.values())):
        raise CheckpointError(f"{path} has malformed sizes {sizes!r:.200}")
    _check_manifest_fields(manifest, path)
    problem = arch_problem(manifest.get("arch"))
    if problem:
        raise CheckpointError(f"{path} has an invalid arch: {problem}")
    return manifest


def _check_manifest_fields(manifest: dict[str, Any], path: Path) -> None:
    """The manifest's other fields, by type, before any of them is used."""
    expected = {"dataset": str, "config": dict, "config_hash": str, "versions": dict, "created": str}
    wrong = [f"{key} ({type(manifest.get(key)).__name__})" for key, kind in expected.items()
             if type(manifest.get(key)) is not kind]
    if wrong:
        raise CheckpointError(f"{path} has missing or mistyped fields: {', '.join(wrong)}")
    if not manifest["dataset"] or not _is_sha256(manifest["config_hash"]):
        raise CheckpointError(f"{path} has an empty dataset or a malformed config_hash")


def arch_problem(arch: Any) -> str:
    """What is wrong with an arch dict, or ``''``: a registered name, ``in_shape`` three ints within
    :data:`MAX_IN_DIM` and :data:`MAX_INPUT_SIZE`, ``num_classes`` an int in [2, :data:`MAX_NUM_CLASSES`].

    Checked before anything is built, so a hostile arch costs no memory (a [1, 1e5, 1e5] input would make
    an MLP of 10 TB).
    """
    if not isinstance(arch, Mapping) or not {"name", "in_shape", "num_classes"} <= arch.keys():
        return f"need name, in_shape, num_classes, got {arch!r}"
    if not isinstance(arch["name"], str) or arch["name"] not in MODELS:
        return f"unknown architecture {arch['name']!r}; known: {model_names()}"
    shape, k = arch["in_shape"], arch["num_classes"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(type(d) is int for d in shape)):
        return f"in_shape must be three ints (C, H, W), got {shape!r}"
    if not all(1 <= d <= MAX_IN_DIM for d in shape) or math.prod(shape) > MAX_INPUT_SIZE:
        return (f"in_shape {list(shape)} is out of bounds: each dimension in [1, {MAX_IN_DIM}], "
                f"at most {MAX_INPUT_SIZE} values in all")
    if type(k) is not int or not 2 <= k <= MAX_NUM_CLASSES:
        return f"num_classes must be an int in [2, {MAX_NUM_CLASSES}], got {k!r}"
    return ""


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


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
