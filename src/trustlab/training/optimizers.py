"""Optimizers and learning-rate schedules by registry name (torch.optim underneath).

Schedules are stepped once per batch, so ``total_steps = epochs * steps_per_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler"]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "cyclic", "one-cycle")


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``sgd`` (plain), ``momentum`` (heavy-ball SGD), ``adam`` or ``adamw``.

    Raises:
        ValueError: unknown name, or a non-positive learning rate.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be finite and > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")


def _multiplier(name: str, total: int):
    """The LR multiplier as a function of the step index ``t`` in ``[0, total)``."""
    if name == "constant":
        return lambda t: 1.0
    if name == "step":  # x0.1 at 50% and 75% of training (the classic ResNet schedule)
        return lambda t: 0.1 ** ((t >= 0.5 * total) + (t >= 0.75 * total))
    if name == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total))
    if name == "cyclic":  # Wong et al. 2020: linear 0 -> lr at 2/5 of training, back to 0 at the end
        peak = max(1, int(0.4 * total))
        return lambda t: (t + 1) / peak if t < peak else max(0.0, (total - t) / max(1, total - peak))
    if name == "one-cycle":  # Smith & Topin 2019, cosine warm-up over 30% then cosine decay
        peak = max(1, int(0.3 * total))

        def f(t: int) -> float:
            if t < peak:
                return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * (t + 1) / peak))
            return 0.5 * (1 + math.cos(math.pi * (t - peak) / max(1, total - peak)))

        return f
    raise ValueError(f"unknown schedule {name!r}; choose one of {list(SCHEDULES)}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, total_steps: int) -> LRScheduler:
    """A per-batch ``LambdaLR`` implementing the named schedule over ``total_steps`` batches."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return LambdaLR(optimizer, _multiplier(name, total_steps))
