"""An evaluation's batches shared out over the ranks of a torchrun job and gathered, in order, on rank 0.

Attacks, certification and smoothing evaluate in independent batches, each named by a key (a batch index, the
first example of a chunk, a group index) and drawing its randomness, if any, from a generator derived from that
key, never from the rank. :func:`run_sharded` runs the keys in rounds of ``W`` (the world size): in each round
rank ``r`` runs key ``r`` of the round, then rank 0 gathers the round's results in rank order, which is key order,
and appends them to its journal. Rank 0 therefore ends with the list, and the journal, that one process running
the keys in order writes. On one process the collectives are no-ops and this is the plain loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from trustlab.distributed import SINGLE, Distributed
from trustlab.evaluation.journal import BatchJournal
from trustlab.progress import progress_bar

__all__ = ["run_sharded", "Batch"]

Batch = tuple[dict[str, Tensor], dict[str, Any]]  # one batch's tensors and its JSON extras (journaled as they are)


def run_sharded(keys: Sequence[int], run_batch: Callable[[int], Batch], *, journal: BatchJournal | None = None,
                job: Distributed = SINGLE, progress: bool = False, desc: str = "evaluate",
                unit: str = "batch") -> list[Batch]:
    """``run_batch(key)`` for every key of ``keys``, shared out over the ranks of ``job``.

    Rank ``r`` runs keys ``r, r + W, ...`` of the sequence; after each round of ``W`` keys rank 0 gathers the
    results and appends each to ``journal`` (rank 0's; the others pass None) in key order. A rank left without a
    key in the last round (``len(keys)`` not a multiple of ``W``) only takes part in the gather.

    Args:
        keys: the batches to run, in the order one process would run them.
        run_batch: ``key -> (tensors, extra)``; ``extra`` holds JSON values, its ``"seconds"`` key is set here.
        journal: where rank 0 records each finished batch, or None.
        job: this process's place in the job (:data:`~trustlab.distributed.SINGLE` for one process).
        progress: show a progress bar over the rounds (on rank 0).
        desc, unit: the bar's label and unit.

    Returns:
        On rank 0, every batch's ``(tensors, extra)`` in key order (tensors on the CPU when they crossed
        processes), ``extra["seconds"]`` its wall time; on the other ranks, an empty list.
    """
    out: list[Batch] = []
    rounds = range(0, len(keys), job.world_size)
    for first in progress_bar(rounds, desc=desc, unit=unit, enabled=progress and job.is_main):
        k, mine = first + job.rank, None
        if k < len(keys):
            t0 = time.perf_counter()
            tensors, extra = run_batch(keys[k])
            mine = (tensors, {"seconds": time.perf_counter() - t0, **extra})
        for item in job.all_gather_object(mine):  # rank order is key order within the round
            if item is not None and job.is_main:
                out.append(item)
                if journal is not None:
                    journal.append(item[0], **item[1])
    return out
