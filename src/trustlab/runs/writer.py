"""The one place through which a run writes its folder, so a distributed run can restrict writing to rank 0.

Every file a training or evaluation run writes (config, records, summary, progress rows, checkpoints) goes
through a :class:`RunWriter`. A writer with ``enabled=False`` (a non-zero rank of a distributed job) performs
no write and returns the path it would have written, so the ranks run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trustlab.runs.atomic import append_jsonl
from trustlab.runs.records import write_json, write_records

__all__ = ["RunWriter"]

T = TypeVar("T")


@dataclass(frozen=True)
class RunWriter:
    """Writes into a run folder when ``enabled`` (rank 0, or a single process); otherwise writes nothing.

    Args:
        root: the run folder.
        enabled: whether this process writes.
    """

    root: Path
    enabled: bool = True

    def json(self, name: str, obj: Mapping[str, Any]) -> Path:
        """``root/name`` as JSON, atomically."""
        path = self.root / name
        return write_json(path, obj) if self.enabled else path

    def records(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """``root/name`` as JSON lines, atomically (the whole file appears at once)."""
        path = self.root / name
        return write_records(path, rows) if self.enabled else path

    def append(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Append rows to ``root/name`` (JSON lines, fsynced)."""
        path = self.root / name
        if self.enabled:
            append_jsonl(path, rows)
        return path

    def call(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run another writing function (e.g. ``commit_checkpoint``) only when enabled."""
        return write(*args, **kwargs) if self.enabled else None
