"""Run folders: ``config.json``, ``records.jsonl`` (one flat row per example), ``summary.json``.

Compute writes records; reports read records. Every file is written atomically, so a killed run never leaves a
truncated file under a final name.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from trustlab.runs.atomic import atomic_write_json, atomic_write_text

__all__ = ["write_records", "read_records", "write_json", "read_json", "versions", "jsonable"]


def jsonable(value: Any) -> Any:
    """Make floats JSON-safe (NaN/Inf become strings) and tensors/numpy scalars plain Python."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_records(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (the whole file appears at once)."""
    text = "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in records)
    atomic_write_text(Path(path), text)
    return Path(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Read a ``records.jsonl`` (or a run folder containing one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj: Mapping[str, Any]) -> Path:
    atomic_write_json(Path(path), jsonable(obj))
    return Path(path)


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def versions() -> dict[str, str]:
    """trustlab, torch, Python and platform versions, for config.json."""
    from trustlab import __version__

    return {
        "trustlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
