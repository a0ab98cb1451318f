"""One epoch of (adversarial) empirical risk minimization, and clean accuracy.

Adversarial example generation runs with the model in eval mode (batch-norm statistics are not updated by the
attack's forward passes); the update step runs in train mode. This is the policy AT-01 of the reliability notes
checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from trustlab.errors import NumericalError
from trustlab.training.defenses import InnerMax

__all__ = ["EpochResult", "train_epoch", "accuracy"]


@dataclass(frozen=True)
class EpochResult:
    """Mean training loss and accuracy over the batches actually trained on (adversarial ones under AT)."""

    loss: float
    acc: float
    steps: int


def train_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    inner_max: InnerMax | None,
    generator: torch.Generator,
    desc: str = "train",
    progress: bool = True,
) -> EpochResult:
    """Train ``model`` for one pass over ``loader``; returns the epoch's mean loss and accuracy.

    Args:
        inner_max: ``(model, x, y, generator) -> x_adv`` (see ``defenses.make_inner_max``), or ``None`` for ERM.
        generator: the RNG stream of the attack's random starts for this epoch.

    Raises:
        NumericalError: the loss became NaN or Inf (the step is named; the caller keeps its last checkpoint).
    """
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    for step, (x, y) in enumerate(bar):
        if inner_max is not None:
            model.eval()
            x = inner_max(model, x, y, generator).detach()
        model.train()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise NumericalError(f"training loss is {loss.item()} at batch {step} ({desc})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = len(y)
        total_loss += loss.item() * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
        steps += 1
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    model.eval()
    if seen == 0:
        raise ValueError("training loader is empty (dataset is empty)")
    return EpochResult(loss=total_loss / seen, acc=correct / seen, steps=steps)


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """Softmax probabilities ``(N, K)`` in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        out = [torch.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    probs = torch.cat(out)
    if not torch.isfinite(probs).all():
        raise NumericalError("model output contains NaN or Inf")
    return probs


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Clean top-1 accuracy of ``model`` on ``(x, y)``."""
    if len(x) == 0:
        raise ValueError("dataset is empty: cannot compute accuracy on 0 examples")
    return float((predict_proba(model, x, batch_size=batch_size).argmax(1) == y).float().mean())
