"""Loading a verified checkpoint: safetensors weights, strict loading, the weights-only state file.

Every file is verified against the manifest first (:mod:`trustlab.checkpoint.manifest`), and exactly the bytes
that were hashed are parsed. ``state.pt`` is read with ``torch.load(..., weights_only=True)`` and never anything
else.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

from trustlab.checkpoint.manifest import MANIFEST_FILE, MODEL_FILE, STATE_FILE, _verify
from trustlab.checkpoint.save import (
    _check_state_value,
    _float_dtype,
    _nonfinite,
    _reference_state,
    _short,
    _weight_problems,
)
from trustlab.errors import CheckpointError
from trustlab.models import build_model

_MIN_TORCH_FOR_PICKLE = (2, 10)  # CVE-2026-24747: weights_only unpickler memory corruption before 2.10
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


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    expected_arch: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    key: str | bytes | None = None,
) -> Checkpoint:
    """Verify and load a checkpoint directory written by :func:`save_checkpoint`.

    The model is rebuilt from the manifest's arch through the registry (initialised from a forked generator,
    so the global RNG is not touched) and loaded with ``strict=True``.

    Args:
        directory: the checkpoint directory.
        expected_arch: if given, every key it has must equal the manifest's arch (``in_shape`` compared as a
            list), e.g. ``{"name": "cnn-small", "num_classes": 10}``.
        map_location: device for the model and the tensors of ``state.pt``.
        key: a signing key (else ``$TRUSTLAB_SIGNING_KEY`` if set): the manifest must carry a signature made
            with it, or the checkpoint is refused. Without one, signatures are not checked.

    Returns:
        The :class:`Checkpoint`, with the model in eval mode on ``map_location``.

    Raises:
        CheckpointError: if the directory or manifest is missing ("no valid checkpoint found at ..."), a listed
            file is missing ("incomplete checkpoint"), a checksum differs ("checksum mismatch for ..."), the
            format is newer than this trustlab, the arch is unknown or differs from ``expected_arch``, a file
            fails to parse, the weights do not match the architecture or hold NaN/Inf, or ``state.pt`` is
            not a safe trustlab state file; with a key, if the manifest is unsigned or signed with another key.
        ValueError: if ``map_location`` is not a device, or ``key`` is empty.
    """
    device = _as_device(map_location)
    directory = Path(directory)
    manifest, blobs = _verify(directory, expected_arch, key=key)
    arch = manifest["arch"]
    weights = _parse_weights(directory / MODEL_FILE, blobs[MODEL_FILE])
    dtype = _float_dtype(weights)
    # Compared on the meta device first: an arch the weights do not fit is refused before it allocates memory.
    problems = _weight_problems(weights, _reference_state(arch, dtype))
    if problems:
        raise CheckpointError(f"{directory / MODEL_FILE} does not match {arch['name']}: {problems}")
    try:
        model = build_model(arch["name"], in_shape=tuple(arch["in_shape"]), num_classes=arch["num_classes"], seed=0)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / MANIFEST_FILE} has an arch that cannot be built: {exc}") from exc
    if dtype is not None:  # a model saved after .double() comes back in float64, bit for bit
        model = model.to(dtype)
    _load_strict(model, weights, directory / MODEL_FILE, arch["name"])
    state = None
    if STATE_FILE in blobs:
        state = _parse_state(directory / STATE_FILE, blobs[STATE_FILE], device)
    return Checkpoint(model=model.to(device).eval(), manifest=manifest, state=state, path=directory)


def load_weights(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    expected_arch: Mapping[str, Any] | None = None,
    key: str | bytes | None = None,
) -> dict[str, Any]:
    """Verify a checkpoint and load its weights into an existing ``model`` (strict).

    Keys, shapes, dtypes and finiteness are checked before anything is copied, and the model's previous
    state is restored if the copy itself fails, so on any error the model's parameters are unchanged.

    Args:
        directory: the checkpoint directory.
        model: the module to load into, with the same state_dict keys, shapes and dtypes as the checkpoint.
        expected_arch, key: as in :func:`load_checkpoint`.

    Returns:
        The verified manifest.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, plus a state_dict mismatch with ``model`` (listing missing,
            unexpected and size-mismatched keys).
    """
    directory = Path(directory)
    manifest, blobs = _verify(directory, expected_arch, key=key)
    weights = _parse_weights(directory / MODEL_FILE, blobs[MODEL_FILE])
    _load_strict(model, weights, directory / MODEL_FILE, "the given model")
    return manifest


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


def _parse_state(path: Path, data: bytes, device: torch.device) -> dict[str, Any]:
    """Unpickle ``state.pt`` with the weights-only unpickler; any failure is final (no unsafe retry)."""
    _check_torch_floor(path)
    try:
        with warnings.catch_warnings():  # trustlab writes protocol 2; another one is refused or checked below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:
        # One line of ours: torch's message is several lines of advice to load with weights_only=False.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed|\n|$)", str(exc))
        detail = found.group(1)[:200] if found else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a safe trustlab state file and was not written by trustlab "
            f"(weights-only loader: {detail}); it is not loaded"
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


def _as_device(map_location: str | torch.device) -> torch.device:
    try:
        return torch.device(map_location)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"map_location must be a device such as 'cpu' or 'cuda:0', got {map_location!r}") from exc
