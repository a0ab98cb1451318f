"""Safe, verifiable checkpoints: safetensors weights, a tensors-and-primitives state file, a checksummed manifest.

A checkpoint is a directory::

    model.safetensors   the state_dict (safetensors: no code, bounded header)
    state.pt            optional: optimizer/scheduler state, RNG states, counters (tensors and primitives only,
                        read with ``torch.load(..., weights_only=True)`` and never anything else)
    manifest.json       written last: format version, arch, dataset, config and its hash, versions, creation
                        time, the sha256 of every file, and the sha256 of the manifest itself

Loading verifies the manifest and every checksum before parsing anything, parses exactly the bytes it
hashed, rebuilds the model from the closed registry (:func:`trustlab.models.build_model`) and loads it with
``strict=True`` after checking keys, shapes, dtypes and finiteness itself, so a failure never leaves a model
half loaded. Every failure is a :class:`~trustlab.errors.CheckpointError` naming the path.

Training runs keep checkpoints in ``<run>/checkpoints/<name>/`` and a pointer ``<run>/checkpoints/latest.json``.
:func:`commit_checkpoint` writes the directory under a temp name, renames it into place, then flips the
pointer, so ``latest.json`` always names a complete checkpoint (one writer per run folder is assumed).

Reference:
    reliability-tests.md SEC-01..07, INP-12, DATA-02, DATA-06, DATA-10, DATA-11; PyTorch ``torch.load``
    ``weights_only`` (PR #86812, CVE-2025-32434, CVE-2026-24747); adaptdl PR #81 (directory + pointer flip).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from trustlab.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from trustlab.errors import CheckpointError
from trustlab.models import MODELS, build_model, model_names

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "canonical_sha256",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "verify_checkpoint",
    "commit_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest.json"
CHECKPOINTS_DIR = "checkpoints"
_KNOWN_FILES = (MODEL_FILE, STATE_FILE)
_SELF_HASH_KEY = "manifest_sha256"
_MIN_TORCH_FOR_PICKLE = (2, 10)  # CVE-2026-24747: weights_only unpickler memory corruption before 2.10
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_LIST_LIMIT = 20
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # the official parser's limit (HeaderTooLarge)


@dataclass(frozen=True)
class Checkpoint:
    """A verified, loaded checkpoint.

    Attributes:
        model: the architecture named by the manifest, with the saved weights, in eval mode.
        manifest: the parsed ``manifest.json``.
        state: the contents of ``state.pt``, or ``None`` if the checkpoint has none.
        path: the checkpoint directory.
    """

    model: nn.Module
    manifest: dict[str, Any]
    state: dict[str, Any] | None
    path: Path


def canonical_sha256(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of ``obj``: sorted keys, no spaces, UTF-8, no NaN/Inf.

    Used for ``config_hash`` (so a resume can refuse a changed config) and for the manifest's own checksum.

    Raises:
        TypeError: if ``obj`` holds a value JSON cannot represent.
        ValueError: if ``obj`` holds NaN or Inf.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: Mapping[str, Any],
    dataset: str,
    config: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally training ``state``) as a verifiable checkpoint directory.

    Files are written atomically in the order weights, state, manifest; an existing manifest in
    ``directory`` is removed first, so a crash mid-save leaves "no valid checkpoint" rather than a mix.
    For crash-safe checkpoints inside a training run use :func:`commit_checkpoint`.

    Args:
        directory: the checkpoint directory; created if missing.
        model: the module to save; its state_dict must match ``build_model(**arch)`` in keys, shapes and
            dtypes, and be finite.
        arch: ``{"name", "in_shape", "num_classes"}`` for :func:`trustlab.models.build_model`, plus any
            other JSON-serialisable descriptive keys.
        dataset: the dataset's name (e.g. ``"mnist"``).
        config: the JSON-serialisable run configuration; its canonical hash goes into the manifest.
        state: optional dict of optimizer/scheduler state dicts, RNG states (as tensors or ints), counters.
            Only tensors, int/float/bool/str/None and list/tuple/dict of those are accepted.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``arch``, ``dataset``, ``config`` or ``state`` holds a value of the wrong type (for
            ``state`` the message names the key).
        ValueError: if ``arch`` is unknown or does not match ``model``, or the weights hold NaN/Inf.
        OSError: if writing fails (the message names the file).
    """
    arch = _check_arch(arch)
    if not isinstance(dataset, str) or not dataset:
        raise TypeError(f"dataset must be a non-empty str, got {dataset!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    config = json.loads(json.dumps(dict(config), allow_nan=False))  # fails early on non-JSON values
    if state is not None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        _check_state_value(state, "state")
    weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    problems = _weight_problems(weights, _reference_state(arch, _float_dtype(weights)))
    if problems:
        raise ValueError(f"model does not match arch {arch}: {problems}")
    bad = _nonfinite(weights)
    if bad:
        raise ValueError(f"model weights hold NaN or Inf in {_short(bad)}; refusing to save an unloadable checkpoint")

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST_FILE, STATE_FILE):
        (directory / stale).unlink(missing_ok=True)
    fsync_dir(directory)

    metadata = {"format": "pt", "trustlab_version": _trustlab_version(), "arch": arch["name"]}
    blobs = {MODEL_FILE: safetensors.torch.save(weights, metadata=metadata)}
    if state is not None:
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        blobs[STATE_FILE] = buffer.getvalue()
    for name, data in blobs.items():
        atomic_write_bytes(directory / name, data)

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "dataset": dataset,
        "config": config,
        "config_hash": canonical_sha256(config),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
    }
    manifest[_SELF_HASH_KEY] = canonical_sha256(manifest)
    atomic_write_json(directory / MANIFEST_FILE, manifest)
    return directory


def _check_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``arch`` as a JSON-ready dict (``in_shape`` as a list); :func:`_reference_state` builds it."""
    if not isinstance(arch, Mapping):
        raise TypeError(f"arch must be a dict, got {type(arch).__name__}")
    missing = [k for k in ("name", "in_shape", "num_classes") if k not in arch]
    if missing:
        raise ValueError(f"arch is missing {missing}: {dict(arch)}")
    if not isinstance(arch["name"], str) or arch["name"] not in MODELS:
        raise ValueError(f"unknown model {arch['name']!r} in arch; choose one of {model_names()}")
    return json.loads(json.dumps(dict(arch), allow_nan=False))


def _check_state_value(value: Any, where: str) -> None:
    """Raise TypeError naming ``where`` unless ``value`` is a tensor, primitive, or container of those.

    Exact types are required: subclasses (numpy scalars, enums, namedtuples) would be pickled by class
    and then refused by the ``weights_only`` unpickler at load time.
    """
    kind = type(value)
    if kind in (Tensor, nn.Parameter, int, float, bool, str, type(None)):
        return
    if kind in (list, tuple, torch.Size):
        for i, item in enumerate(value):
            _check_state_value(item, f"{where}[{i}]")
        return
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_state_value(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} has type {kind.__module__}.{kind.__qualname__}; state may hold only tensors, "
        "int/float/bool/str/None and list/tuple/dict of them (store RNG states as tensors or ints)"
    )


# --------------------------------------------------------------------------------------------------------------
# load


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    expected_arch: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Verify and load a checkpoint directory written by :func:`save_checkpoint`.

    The model is rebuilt from the manifest's arch through the registry (initialised from a forked generator,
    so the global RNG is not touched) and loaded with ``strict=True``.

    Args:
        directory: the checkpoint directory.
        expected_arch: if given, every key it has must equal the manifest's arch (``in_shape`` compared as a
            list), e.g. ``{"name": "cnn-small", "num_classes": 10}``.
        map_location: device for the model and the tensors of ``state.pt``.

    Returns:
        The :class:`Checkpoint`, with the model in eval mode on ``map_location``.

    Raises:
        CheckpointError: if the directory or manifest is missing ("no valid checkpoint found at ..."), a listed
            file is missing ("incomplete checkpoint"), a checksum differs ("checksum mismatch for ..."), the
            format is newer than this trustlab, the arch is unknown or differs from ``expected_arch``, a file
            fails to parse, the weights do not match the architecture or hold NaN/Inf, or ``state.pt`` is
            not a safe trustlab state file.
        ValueError: if ``map_location`` is not a device.
    """
    device = _as_device(map_location)
    directory = Path(directory)
    manifest, blobs = _verify(directory, expected_arch)
    arch = manifest["arch"]
    weights = _parse_weights(directory / MODEL_FILE, blobs[MODEL_FILE])
    try:
        model = build_model(arch["name"], in_shape=tuple(arch["in_shape"]), num_classes=arch["num_classes"], seed=0)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / MANIFEST_FILE} has an arch that cannot be built: {exc}") from exc
    dtype = _float_dtype(weights)
    if dtype is not None:  # a model saved after .double() comes back in float64, bit for bit
        model = model.to(dtype)
    _load_strict(model, weights, directory / MODEL_FILE, arch["name"])
    state = None
    if STATE_FILE in blobs:
        state = _parse_state(directory / STATE_FILE, blobs[STATE_FILE], device)
    return Checkpoint(model=model.to(device).eval(), manifest=manifest, state=state, path=directory)


def load_weights(
    directory: str | os.PathLike[str], model: nn.Module, *, expected_arch: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Verify a checkpoint and load its weights into an existing ``model`` (strict).

    Keys, shapes, dtypes and finiteness are checked before anything is copied, and the model's previous
    state is restored if the copy itself fails, so on any error the model's parameters are unchanged.

    Args:
        directory: the checkpoint directory.
        model: the module to load into, with the same state_dict keys, shapes and dtypes as the checkpoint.
        expected_arch: as in :func:`load_checkpoint`.

    Returns:
        The verified manifest.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, plus a state_dict mismatch with ``model`` (listing missing,
            unexpected and size-mismatched keys).
    """
    directory = Path(directory)
    manifest, blobs = _verify(directory, expected_arch)
    weights = _parse_weights(directory / MODEL_FILE, blobs[MODEL_FILE])
    _load_strict(model, weights, directory / MODEL_FILE, "the given model")
    return manifest


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


def _parse_weights(path: Path, data: bytes) -> dict[str, Tensor]:
    """Parse safetensors bytes; every parser failure becomes a CheckpointError naming ``path``."""
    duplicates = _duplicate_header_names(data)
    if duplicates:
        raise CheckpointError(f"{path} is not a valid safetensors file: duplicate tensor names {_short(duplicates)}")
    try:
        weights = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError, but also errors the torch conversion raises on odd dtypes
        raise CheckpointError(f"{path} is not a valid safetensors file: {type(exc).__name__}: {exc}") from exc
    bad = _nonfinite(weights)
    if bad:
        raise CheckpointError(f"{path} holds NaN or Inf in {_short(bad)}")
    return weights


def _nonfinite(weights: Mapping[str, Tensor]) -> list[str]:
    """Sorted names of floating or complex tensors holding NaN or Inf."""
    inexact = {k: t for k, t in weights.items() if t.is_floating_point() or t.is_complex()}
    return sorted(k for k, t in inexact.items() if not t.isfinite().all())


def _duplicate_header_names(data: bytes) -> list[str]:
    """Names that occur twice in a safetensors JSON header (the parser keeps the last one silently).

    Only a well-formed header is inspected; anything else is left for the safetensors parser to reject.
    """
    if len(data) < 8:
        return []
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, _SAFETENSORS_HEADER_LIMIT):
        return []
    objects: list[list[str]] = []  # keys of every JSON object, innermost first, so the header comes last

    def collect(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append([k for k, _ in pairs])
        return dict(pairs)

    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"), object_pairs_hook=collect)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return []
    if not isinstance(header, dict):
        return []
    return sorted(k for k, n in Counter(objects[-1]).items() if n > 1)


def _load_strict(model: nn.Module, weights: dict[str, Tensor], path: Path, what: str) -> None:
    """Load ``weights`` into ``model`` strictly, all or nothing."""
    current = model.state_dict()
    problems = _weight_problems(weights, current)
    if problems:
        raise CheckpointError(f"{path} does not match {what}: {problems}")
    backup = {k: v.detach().clone() for k, v in current.items()}
    try:
        model.load_state_dict(weights, strict=True)
    except Exception as exc:
        model.load_state_dict(backup, strict=True)
        raise CheckpointError(f"{path} could not be loaded into {what}: {exc}") from exc


def _weight_problems(weights: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> str:
    """Describe missing, unexpected, size-mismatched and dtype-mismatched keys ('' if none)."""
    missing = sorted(reference.keys() - weights.keys())
    unexpected = sorted(weights.keys() - reference.keys())
    common = sorted(reference.keys() & weights.keys())
    sizes = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in common
        if weights[k].shape != reference[k].shape
    ]
    dtypes = [
        f"{k}: checkpoint {weights[k].dtype} vs model {reference[k].dtype}"
        for k in common
        if weights[k].dtype != reference[k].dtype
    ]
    parts = [
        f"{label} {_short(items)}"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("size-mismatched keys", sizes),
            ("dtype-mismatched keys", dtypes),
        )
        if items
    ]
    return "; ".join(parts)


def _reference_state(arch: Mapping[str, Any], dtype: torch.dtype | None) -> dict[str, Tensor]:
    """The state_dict (on the meta device, floats cast to ``dtype``) that ``arch`` builds: no data, no RNG."""
    with torch.device("meta"):
        model = build_model(arch["name"], in_shape=tuple(arch["in_shape"]), num_classes=arch["num_classes"])
    return (model if dtype is None else model.to(dtype)).state_dict()


def _float_dtype(weights: Mapping[str, Tensor]) -> torch.dtype | None:
    """The floating dtype all floating tensors share, or ``None`` if there is none or they differ."""
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _parse_state(path: Path, data: bytes, device: torch.device) -> dict[str, Any]:
    """Unpickle ``state.pt`` with the weights-only unpickler; any failure is final (no unsafe retry)."""
    _check_torch_floor(path)
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a safe trustlab state file (refused by the weights-only loader: {exc})"
        ) from exc
    try:
        if type(state) not in (dict, OrderedDict):
            raise TypeError(f"top level is {type(state).__name__}, not dict")
        _check_state_value(state, "state")
    except TypeError as exc:
        raise CheckpointError(f"{path} is not a safe trustlab state file: {exc}") from exc
    return dict(state)


def _check_torch_floor(path: Path) -> None:
    """Refuse to unpickle on torch versions whose weights-only unpickler has known RCE (SEC-07)."""
    found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if found is None or tuple(map(int, found.groups())) < _MIN_TORCH_FOR_PICKLE:
        floor = ".".join(map(str, _MIN_TORCH_FOR_PICKLE))
        raise CheckpointError(
            f"refusing to read {path} with torch {torch.__version__}: its weights-only unpickler has known "
            f"vulnerabilities (CVE-2025-32434, CVE-2026-24747); install torch >= {floor}"
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


# --------------------------------------------------------------------------------------------------------------
# run folders: checkpoints/<name>/ plus checkpoints/latest.json


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
        model, arch, dataset, config, state: as in :func:`save_checkpoint`.
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
        save_checkpoint(tmp, model, arch=arch, dataset=dataset, config=config, state=state)
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


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _as_device(map_location: str | torch.device) -> torch.device:
    try:
        return torch.device(map_location)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"map_location must be a device such as 'cpu' or 'cuda:0', got {map_location!r}") from exc


def _trustlab_version() -> str:
    from trustlab import __version__  # imported late: trustlab/__init__ may import this module

    return __version__


def _versions() -> dict[str, str]:
    return {"trustlab": _trustlab_version(), "torch": str(torch.__version__), "python": platform.python_version()}


def _short(items: list[str]) -> str:
    """``[a, b, ...]`` with at most ``_LIST_LIMIT`` items and a count of the rest."""
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
