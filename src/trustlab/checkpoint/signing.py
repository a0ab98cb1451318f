"""Optional manifest signatures: HMAC-SHA256 with a user's secret, so a user can tell their checkpoints apart.

The manifest's sha256 (and the checksums it lists) detect corruption, not tampering: anyone who edits a file can
recompute them. A signature cannot be recomputed without the key. With a key (``key=`` or the environment
variable :data:`SIGNING_KEY_ENV`), saving adds ``"signature": {"alg": "hmac-sha256", "value": ...}`` over the
canonical JSON of the manifest (without its own sha256 and the signature), which lists every file's sha256; loading
with a key refuses an unsigned or wrongly signed manifest. Without a key, nothing changes.

Reference:
    RFC 2104 (HMAC); Python's :mod:`hmac` (``compare_digest`` for a constant-time comparison).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from trustlab.errors import CheckpointError

SIGNING_KEY_ENV = "TRUSTLAB_SIGNING_KEY"
SIGNATURE_KEY = "signature"
_ALG = "hmac-sha256"


def resolve_key(key: str | bytes | None) -> bytes | None:
    """The signing key: ``key`` if given, else ``$TRUSTLAB_SIGNING_KEY`` if set and not empty, else ``None``.

    Raises:
        TypeError: ``key`` is not a str, bytes or None.
        ValueError: ``key`` is empty.
    """
    if key is None:
        key = os.environ.get(SIGNING_KEY_ENV) or None
        if key is None:
            return None
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be a str or bytes, got {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return key.encode("utf-8") if isinstance(key, str) else key


def signature(manifest: dict[str, Any], key: bytes, self_hash_key: str) -> dict[str, str]:
    """The signature entry for ``manifest`` (its ``self_hash_key`` and any signature left out)."""
    body = {k: v for k, v in manifest.items() if k not in (self_hash_key, SIGNATURE_KEY)}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return {"alg": _ALG, "value": hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()}


def check_signature(manifest: dict[str, Any], key: bytes, path: Path, self_hash_key: str) -> None:
    """Raise unless ``manifest`` carries a signature made with ``key``.

    Raises:
        CheckpointError: the manifest is unsigned, or signed with another key or altered since.
    """
    found = manifest.get(SIGNATURE_KEY)
    if found is None:
        raise CheckpointError(f"{path} is not signed, but a signing key was given: refusing a checkpoint that "
                              "cannot be shown to come from the key's owner")
    if not (isinstance(found, dict) and found.get("alg") == _ALG and isinstance(found.get("value"), str)):
        raise CheckpointError(f"{path} has a malformed signature (expected {_ALG})")
    if not hmac.compare_digest(found["value"], signature(manifest, key, self_hash_key)["value"]):
        raise CheckpointError(f"signature mismatch for {path}: it was signed with another key, or altered since")
