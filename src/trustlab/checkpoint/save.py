"""Writing a checkpoint directory, and the checks on what may go into one.

:func:`save_checkpoint` refuses an arch outside the registry, weights that do not match it or hold NaN/Inf, and
state that is not tensors and primitives. The weight and state checks are applied again by
:mod:`trustlab.checkpoint.load` to what it reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from trustlab.runs.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from trustlab.checkpoint.manifest import (
    _SELF_HASH_KEY,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    _trustlab_version,
    _versions,
    arch_problem,
    canonical_sha256,
)
from trustlab.checkpoint.signing import SIGNATURE_KEY, resolve_key, signature
from trustlab.models import MODELS, build_model, model_names

_LIST_LIMIT = 20


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: Mapping[str, Any],
    dataset: str,
    config: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    key: str | bytes | None = None,
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
        key: a signing key (else ``$TRUSTLAB_SIGNING_KEY`` if set): the manifest is signed with HMAC-SHA256,
            so a load given the same key can tell it came from the key's owner (:mod:`trustlab.checkpoint.signing`).

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: if ``arch``, ``dataset``, ``config``, ``state`` or ``key`` holds a value of the wrong type
            (for ``state`` the message names the key).
        ValueError: if ``arch`` is unknown or does not match ``model``, the weights hold NaN/Inf, or ``key`` is
            empty.
        OSError: if writing fails (the message names the file).
    """
    secret = resolve_key(key)
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
        "sizes": {name: len(data) for name, data in blobs.items()},  # checked before a file is read
    }
    if secret is not None:
        manifest[SIGNATURE_KEY] = signature(manifest, secret, _SELF_HASH_KEY)
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
    problem = arch_problem(arch)  # the bounds load applies, so a saved checkpoint always loads
    if problem:
        raise ValueError(f"invalid arch: {problem}")
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


def _nonfinite(weights: Mapping[str, Tensor]) -> list[str]:
    """Sorted names of floating or complex tensors holding NaN or Inf."""
    inexact = {k: t for k, t in weights.items() if t.is_floating_point() or t.is_complex()}
    return sorted(k for k, t in inexact.items() if not t.isfinite().all())


def _short(items: list[str]) -> str:
    """``[a, b, ...]`` with at most ``_LIST_LIMIT`` items and a count of the rest."""
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
