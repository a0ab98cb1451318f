"""Safe, verifiable checkpoints: safetensors weights, a tensors-and-primitives state file, a checksummed manifest.

A checkpoint is a directory::

    model.safetensors   the state_dict (safetensors: no code, bounded header)
    state.pt            optional: optimizer/scheduler state, RNG states, counters (tensors and primitives only,
                        read with ``torch.load(..., weights_only=True)`` and never anything else)
    manifest.json       written last: format version, arch, dataset, config and its hash, versions, creation
                        time, the sha256 and size of every file, and the sha256 of the manifest itself

Loading verifies the manifest, every file's size (before reading it) and every checksum before parsing anything,
parses exactly the bytes it hashed, rebuilds the model from the closed registry (:func:`trustlab.models.build_model`) and loads it with
``strict=True`` after checking keys, shapes, dtypes and finiteness itself, so a failure never leaves a model
half loaded. Every failure is a :class:`~trustlab.errors.CheckpointError` naming the path.

The checksums detect corruption, not tampering (whoever edits a file can recompute them). To tell your own
checkpoints apart, sign them: with ``key=`` (or ``$TRUSTLAB_SIGNING_KEY``) the manifest carries an HMAC-SHA256
signature, and a load given the key refuses an unsigned or wrongly signed manifest
(:mod:`trustlab.checkpoint.signing`).

Training runs keep checkpoints in ``<run>/checkpoints/<name>/`` and a pointer ``<run>/checkpoints/latest.json``.
:func:`commit_checkpoint` writes the directory under a temp name, renames it into place, then flips the
pointer, so ``latest.json`` always names a complete checkpoint (one writer per run folder is assumed).

Reference:
    reliability-tests.md SEC-01..07, INP-12, DATA-02, DATA-06, DATA-10, DATA-11; PyTorch ``torch.load``
    ``weights_only`` (PR #86812, CVE-2025-32434, CVE-2026-24747); adaptdl PR #81 (directory + pointer flip).
"""

from __future__ import annotations

# The file-name constants are not in __all__, but stay importable from here as they were before the split.
from trustlab.checkpoint.load import Checkpoint, load_checkpoint, load_weights
from trustlab.checkpoint.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    canonical_sha256,
    verify_checkpoint,
)
from trustlab.checkpoint.rundir import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    checkpoint_ref,
    commit_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
)
from trustlab.checkpoint.save import save_checkpoint
from trustlab.checkpoint.signing import SIGNING_KEY_ENV

__all__ = [
    "FORMAT_VERSION",
    "SIGNING_KEY_ENV",
    "Checkpoint",
    "canonical_sha256",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "verify_checkpoint",
    "commit_checkpoint",
    "checkpoint_ref",
    "latest_checkpoint",
    "prune_checkpoints",
]
