"""One epoch of training on a defense's objective.

The loop puts the model in train mode and descends on the loss the objective returns; the objective runs its
attack in eval mode itself (batch-norm statistics are not updated by an attack's forward passes: the policy AT-01
of the reliability notes checks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trustlab.distributed import SINGLE, Distributed
from trustlab.errors import NumericalError
from trustlab.progress import progress_bar
from trustlab.threat import ShardedBall
from trustlab.training.defenses import Objective
from trustlab.training.sharded import ShardBatch

__all__ = ["EpochResult", "train_epoch"]


@dataclass(frozen=True)
class EpochResult:
    """Mean training loss and accuracy over the batches trained on (on the logits the objective returned)."""

    loss: float
    acc: float
    steps: int


def train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    objective: Objective | Callable[[float], Objective],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    desc: str = "train",
    progress: bool = True,
    job: Distributed = SINGLE,
) -> EpochResult:
    """Train ``model`` for one pass over ``loader``; returns the epoch's mean loss and accuracy.

    Args:
        objective: ``(model, x, y, *, generator) -> (loss, logits)``, a defense bound to the epoch's threat; or,
            for a per-batch schedule (an eps ramp), a function of the fraction of the epoch done after the batch,
            ``(step + 1) / len(loader)``, returning that batch's objective.
        generator: the RNG stream of the objective's randomness (random starts) for this epoch.
        device: where the batches are moved (the model's device). A loader may yield ``(x, y)`` or
            ``(x, y, idx)``, or in a distributed job :class:`~trustlab.training.sharded.ShardBatch` slices of
            the global batches (:class:`~trustlab.training.sharded.ShardedBatches`).
        job: the distributed job; the returned loss and accuracy are then over every rank's examples.

    Raises:
        NumericalError: the loss became NaN or Inf (the step is named; the caller keeps its last checkpoint).
        ValueError: the loader is empty.
    """
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    bar = progress_bar(loader, desc=desc, enabled=progress)
    for step, batch in enumerate(bar):
        # asynchronous from pinned host memory; a no-op for a training set kept on the device
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        model.train()
        batch_objective = objective if isinstance(objective, Objective) else objective((step + 1) / len(loader))
        weight = 1.0
        if isinstance(batch, ShardBatch):  # this rank's rows of the global batch, and their random draws
            threat = ShardedBall.of(batch_objective.threat, start=batch.start, rows=len(y), total=batch.total)
            batch_objective, weight = dataclasses.replace(batch_objective, threat=threat), batch.weight
        loss, logits = batch_objective(model, x, y, generator=generator)
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss is {loss.item()} at batch {step} ({desc})")
        optimizer.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        optimizer.step()
        scheduler.step()
        n = len(y) if weight else 0  # a weight-0 stand-in (an empty slice) is not counted
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum()) if n else 0
        seen += n
        steps += 1
        if step % 20 == 0 and seen:
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    model.eval()
    if job.enabled:  # the epoch's statistics over the global batches
        total_loss, correct, seen = map(sum, zip(*job.all_gather_object((total_loss, correct, seen))))
    if seen == 0:
        raise ValueError("training loader is empty (dataset is empty)")
    return EpochResult(loss=total_loss / seen, acc=correct / seen, steps=steps)
