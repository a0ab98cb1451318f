"""FGSM adversarial training (Goodfellow et al. 2015), as in the lecture: no random start, step eps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustlab.attacks import fgsm
from trustlab.attacks.base import eval_mode
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense

__all__ = ["FGSMTraining"]


@register_defense
@dataclass(frozen=True)
class FGSMTraining(Defense):
    """Cross-entropy at the FGSM point of each batch. It uses the true label, so it can show label leaking
    (Kurakin et al. 2017), and it overfits catastrophically at large eps (Wong et al. 2020).

    Reference:
        Goodfellow, Shlens & Szegedy, ICLR 2015, arXiv:1412.6572 (Sec. 5).
    """

    name = "fgsm"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        with eval_mode(model):  # the attack's forward passes do not update batch-norm statistics (AT-01)
            x_adv = fgsm(model, x, y, threat).detach()
        logits = model(x_adv)
        return nn.functional.cross_entropy(logits, y), logits
