"""A long evaluation's finished batches, kept beside the run so that a killed evaluation resumes where it stopped.

An ensemble on a full test set runs for half an hour or more on a CPU. :class:`BatchJournal` writes, after each
batch, that batch's results (``x_adv``, an ensemble's per-member masks) and the state of the evaluation's
generator into ``RUN/attacks/.<id>.partial/``. Run again with the same configuration on the same checkpoint, the
evaluation loads the finished batches, restores the generator (for an evaluation that draws from one stream;
one whose batches each have their own generator passes none), and goes on from the next batch: its records are
bitwise those of an uninterrupted run (for a given thread count), because every batch draws from the same
generator stream as before. The journal is removed once the evaluation is committed; a journal of another
checkpoint is discarded.

Each batch is one safetensors file written atomically before ``journal.json`` counts it, so a kill between the two
only loses that batch.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from safetensors.torch import load, save

from trustlab.runs import atomic_write_bytes, jsonable, read_json, write_json

__all__ = ["BatchJournal", "partial_folder"]

log = logging.getLogger(__name__)
_STATE = "generator_state"  # the tensor name of the generator's state in a batch file
_INDEX = "journal.json"


def partial_folder(out: Path) -> Path:
    """Where the journal of the evaluation to be committed as ``out`` lives: ``.<name>.partial`` beside it."""
    return out.parent / f".{out.name}.partial"


class BatchJournal:
    """The finished batches of one evaluation (``identity`` on ``checkpoint``), in ``folder``.

    Args:
        folder: the journal's folder (:func:`partial_folder`); created on the first :meth:`append`.
        identity: what makes the evaluation the same (its config); a journal written for another is discarded.
        checkpoint: the checkpoint reference (name and sha256) the evaluation attacks.
    """

    def __init__(self, folder: Path, identity: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        # as it reads back from JSON (tuples become lists), so that a journal compares equal to its own key
        self._key = json.loads(json.dumps(jsonable({"identity": identity, "checkpoint": checkpoint})))
        self._done: list[dict[str, Any]] = []  # per finished batch: its extra values (seconds, ...)
        self.resumed_batches = 0  # batches taken from an earlier process by :meth:`resume`
        self.resumed_seconds = 0.0  # their recorded ``seconds``

    def resume(self, generator: torch.Generator | None = None) -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
        """The finished batches, in order, as ``(tensors, extra)``, with ``generator`` (if given) set to its
        state after the last of them; an empty list (and a fresh journal) when there is none, or when it belongs
        to another evaluation or cannot be read."""
        try:
            index = read_json(self.folder / _INDEX)
            if not isinstance(index, dict) or {k: index.get(k) for k in self._key} != self._key:
                raise ValueError("the journal belongs to another evaluation or checkpoint")
            extras = list(index["batches"])
            batches = []
            for k, extra in enumerate(extras):
                tensors = load((self.folder / f"batch-{k:05d}.safetensors").read_bytes())
                batches.append((tensors, dict(extra)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            if self.folder.exists():
                log.warning("discarding the unusable journal %s: %s", self.folder, err)
            self.clear()
            return []
        if batches and generator is not None:
            if _STATE not in batches[-1][0]:
                log.warning("discarding the journal %s: it holds no generator state to resume from", self.folder)
                self.clear()
                return []
            generator.set_state(batches[-1][0][_STATE])
        for tensors, _ in batches:
            tensors.pop(_STATE, None)
        if batches:
            log.info("resuming from %s: %d finished batch(es)", self.folder, len(batches))
        self._done = [extra for _, extra in batches]
        self.resumed_batches = len(batches)
        self.resumed_seconds = float(sum(extra.get("seconds", 0.0) for extra in self._done))
        return batches

    def append(self, tensors: Mapping[str, Tensor], generator: torch.Generator | None = None, **extra: Any) -> None:
        """Record one more finished batch: its ``tensors``, the ``generator``'s state after it (when the
        evaluation draws from one stream), and ``extra`` JSON values (its seconds, ...)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        k = len(self._done)
        payload = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        if generator is not None:
            payload[_STATE] = generator.get_state()
        atomic_write_bytes(self.folder / f"batch-{k:05d}.safetensors", save(payload))
        self._done.append(dict(extra))
        write_json(self.folder / _INDEX, {**self._key, "batches": self._done})

    def clear(self) -> None:
        """Remove the journal (after the evaluation is committed, or when it is of no use)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._done = []
