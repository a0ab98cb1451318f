"""PGD adversarial training (Madry et al. 2018): descend on the loss at the PGD point of each batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustlab.attacks import pgd
from trustlab.attacks.base import check_step_size, check_steps, eval_mode
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense

__all__ = ["PGDTraining"]


@register_defense
@dataclass(frozen=True)
class PGDTraining(Defense):
    """``min_theta E[max_{delta in Delta} CE(f_theta(x + delta), y)]``; by Danskin's theorem the gradient of the
    inner max is the gradient of the loss at the maximizer, so each step attacks the batch, then descends.

    Args:
        steps: inner PGD steps, from a random start.
        step_size: the inner step at the full eps; ``None`` means ``2.5 * eps / steps``.

    Reference:
        Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018, arXiv:1706.06083 (eq. 2.1, Sec. 4).
    """

    name = "pgd"
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        if check_steps(self.steps) < 1:
            raise ValueError(f"steps must be >= 1 for PGD training, got {self.steps}")
        object.__setattr__(self, "step_size", check_step_size(self.step_size))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        with eval_mode(model):
            x_adv = pgd(model, x, y, threat, steps=self.steps, step_size=self.step_size, random_start=True,
                        generator=generator).detach()
        logits = model(x_adv)
        return nn.functional.cross_entropy(logits, y), logits
