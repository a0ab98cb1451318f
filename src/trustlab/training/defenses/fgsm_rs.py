"""FGSM with random start ("fast is better than free", Wong, Rice & Kolter 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustlab.attacks import fgsm_rs
from trustlab.attacks.base import check_step_size, eval_mode
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense

__all__ = ["FGSMRSTraining"]


@register_defense
@dataclass(frozen=True)
class FGSMRSTraining(Defense):
    """Cross-entropy at the FGSM-RS point of each batch (Algorithm 3 of arXiv:2001.03994).

    Args:
        step_size: the step at the full eps; ``None`` means ``1.25 * eps``. Lower it if training overfits
            catastrophically (the authors' advice); it shrinks with eps during a warm-up.
    """

    name = "fgsm-rs"
    step_size: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_size", check_step_size(self.step_size))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        with eval_mode(model):
            x_adv = fgsm_rs(model, x, y, threat, step_size=self.step_size, generator=generator).detach()
        logits = model(x_adv)
        return nn.functional.cross_entropy(logits, y), logits
