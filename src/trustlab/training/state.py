"""The training state a run's checkpoints carry (``state.pt``), and its schema, checked before a resume uses it.

A checkpoint's state file is read by the weights-only loader, so it holds only tensors and primitives; this
module checks that those are the ones a resume needs, with the right types and consistent values, so that a
hostile or damaged state is one :class:`~trustlab.errors.CheckpointError` naming the file rather than a
``KeyError`` or a resume that silently "completes".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trustlab.errors import CheckpointError

__all__ = ["train_state", "check_train_state"]


def train_state(epoch: int, optimizer, scheduler, history: list, seconds: float) -> dict[str, Any]:
    """What a checkpoint needs besides the weights to resume after ``epoch``."""
    return {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "train_seconds": seconds}


def check_train_state(state: dict[str, Any] | None, path: Path, *, epochs: int) -> dict[str, Any]:
    """Return ``state`` if a run of ``epochs`` epochs can resume from it, else raise naming ``path``.

    Schema: ``epoch`` an int in [0, ``epochs``]; ``history`` a list of ``epoch`` dicts whose ``epoch`` keys are
    1, 2, ...; ``optimizer`` a dict with ``state`` (dict) and ``param_groups`` (list); ``scheduler`` a dict;
    ``train_seconds`` a finite number >= 0. Other keys (``selected_epoch``) are allowed.

    Raises:
        CheckpointError: the checkpoint has no state file, or its state does not fit the schema.
    """
    where = path / "state.pt"
    if state is None:
        raise CheckpointError(f"{path} has no training state (state.pt); it cannot be resumed")
    missing = [k for k in ("epoch", "optimizer", "scheduler", "history", "train_seconds") if k not in state]
    if missing:
        raise CheckpointError(f"{where} is missing {', '.join(missing)}; it cannot be resumed")
    epoch, history, seconds = state["epoch"], state["history"], state["train_seconds"]
    if type(epoch) is not int or epoch < 0:
        raise CheckpointError(f"{where} has an invalid epoch {_short(epoch)} (need an int >= 0)")
    if not isinstance(history, list) or len(history) != epoch or not all(
            isinstance(row, dict) and row.get("epoch") == i + 1 for i, row in enumerate(history)):
        raise CheckpointError(f"{where} has a history that is not one row per epoch 1..{epoch}")
    if epoch > epochs:
        raise CheckpointError(f"{where} is at epoch {epoch}, past the configured epochs ({epochs}); "
                              f"resume with epochs >= {epoch}")
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)) or not isinstance(state["scheduler"], dict):
        raise CheckpointError(f"{where} has an invalid optimizer or scheduler state")
    if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0:
        raise CheckpointError(f"{where} has an invalid train_seconds {_short(seconds)} (need a finite number >= 0)")
    return state


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
