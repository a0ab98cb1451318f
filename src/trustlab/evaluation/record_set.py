"""What every evaluation of a trained run shares: its test examples, and committing its record set atomically.

An evaluation (``trustlab attack``, ``trustlab verify``) reads the run's seeded test split, or a prefix of it so that
record indices agree across evaluations, and writes ``RUN/<kind folder>/<id>/`` (``config.json``,
``records.jsonl``, ``summary.json``, ...) into a hidden temp folder that is renamed into place, so a result is
either wholly there or absent. Callers hold the run's lock while they do.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from trustlab.data import make_splits
from trustlab.runs import atomic_write_bytes, read_json, write_json, write_records
from trustlab.runs.folder import MARKER, commit_folder, is_run

__all__ = ["check_run", "check_subset", "evaluation_examples", "commit_record_set", "committed_summary"]


def check_run(run_dir: Path) -> Path:
    """``run_dir`` as a path, if it is a trustlab run folder.

    Raises:
        FileNotFoundError: it is not a folder with the run marker (the message names it).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run(run_dir):
        raise FileNotFoundError(f"no valid checkpoint found in {run_dir}: it is not a trustlab run folder (no {MARKER})")
    return run_dir


def check_subset(subset: int | None) -> int | None:
    """``subset`` if it is None or an int ``>= 1``.

    Raises:
        ValueError: anything else (named).
    """
    if isinstance(subset, bool) or not (subset is None or isinstance(subset, int) and subset >= 1):
        raise ValueError(f"subset must be an int >= 1, got {subset!r}")
    return subset


def evaluation_examples(run_dir: Path, *, root: str | None = None, subset: int | None = None) -> tuple[Tensor, Tensor]:
    """The run's test split as its training config built it (dataset, seed, validation size, subset), or its
    first ``subset`` examples: a prefix, so that record ``idx`` values agree across evaluations.

    Raises:
        FileNotFoundError, ValueError: the run's ``config.json`` or its dataset can't be read.
    """
    train_cfg = read_json(Path(run_dir) / "config.json")["config"]
    splits = make_splits(train_cfg["dataset"], root=root or train_cfg.get("root"), val_size=train_cfg.get("val_size"),
                         seed=train_cfg["seed"], subset=train_cfg.get("subset"))
    x, y = splits.test
    if subset is not None:
        x, y = x[:subset], y[:subset]
    return x, y


def commit_record_set(out: Path, files: Mapping[str, bytes | Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> None:
    """Write ``files`` into ``<parent>/.<name>.<random>.tmp/`` in order, then rename that folder to ``out`` in one
    step (replacing a previous ``out`` wholly). Stale temp folders of killed evaluations are removed first.

    Args:
        out: the record set's folder, ``RUN/<kind folder>/<id>``.
        files: file name -> content: ``bytes`` as they are, a mapping as JSON, a sequence of mappings as JSON
            lines. Put ``summary.json`` last: it marks a finished evaluation.

    Raises:
        TypeError: a content of another type (nothing is committed).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(".*.tmp"):  # left by a killed evaluation (the caller holds the run's lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for name, content in files.items():
            if isinstance(content, (bytes, bytearray)):
                atomic_write_bytes(tmp / name, bytes(content))
            elif isinstance(content, Mapping):
                write_json(tmp / name, content)
            elif isinstance(content, Sequence) and not isinstance(content, str):
                write_records(tmp / name, content)
            else:
                raise TypeError(f"{name}: content must be bytes, a mapping or a sequence of rows, "
                                f"got {type(content).__name__}")
        commit_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def committed_summary(out: Path, identity: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``summary.json`` of the record set committed in ``out`` if its ``config.json`` holds every item of
    ``identity`` and names ``checkpoint`` (by name and sha256); None otherwise (absent, unreadable or different)."""
    try:
        done, cfg = read_json(out / "summary.json"), read_json(out / "config.json")
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or not isinstance(done, dict):
        return None
    same = all(cfg.get(k) == v for k, v in identity.items())
    return done if same and cfg.get("checkpoint") == checkpoint else None
