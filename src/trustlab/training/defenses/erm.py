"""Standard training: empirical risk minimization of the cross-entropy on clean inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense

__all__ = ["ERM"]


@register_defense
@dataclass(frozen=True)
class ERM(Defense):
    """``min_theta E[CE(f_theta(x), y)]``: no attack, no robustness check (``keep_best`` has nothing to select on)."""

    name = "none"
    adversarial = False
    selection_metric = None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return nn.functional.cross_entropy(logits, y), logits

    def validate(self, model, x, y, *, threat, generator, batch_size) -> dict[str, float]:
        return {}
