"""The fast gradient (sign) method: one step of size eps along the steepest-ascent direction of the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustlab.attacks.base import (
    check_attack_args,
    check_model,
    check_threat,
    input_gradient,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.losses import get_loss
from trustlab.errors import NumericalError
from trustlab.threat import LpBall

__all__ = ["fgsm", "FGSM"]


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    y_target: Tensor | None = None,
    loss: str = "ce",
) -> Tensor:
    """Fast gradient method: ``x_adv = Proj(x + eps * d)`` with ``d = argmax_{||d||_p <= 1} <d, grad_x L>``.

    For p = inf, ``d = sign(grad)`` (FGSM); for p = 2, ``d = grad / ||grad||_2`` (the l2 fast gradient method).
    The step is projected onto the threat ball and the box. It is exact on a binary linear model under l_inf
    with an inactive box (the loss gradient has a constant sign pattern there).

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``, ``K >= 2``. Run in eval mode (warned if it is not); its
            mode, parameters and buffers are left as they were.
        x: clean inputs inside ``[threat.lower, threat.upper]``; not modified.
        y: true labels.
        threat: the perturbation set.
        y_target: if given, step toward these classes (maximize ``-loss(logits, y_target)``); each must differ
            from ``y``.
        loss: a key of :data:`trustlab.attacks.LOSSES` (``"ce"`` or ``"margin"``).

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``. ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments (INP-01..09).
        NumericalError: NaN or Inf in the logits, loss or gradient.

    Shapes:
        x (N, *D), y (N,), y_target (N,) or None -> x_adv (N, *D).

    Reference:
        Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015,
        arXiv:1412.6572 (eq. 3).
    """
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    get_loss(loss)
    if threat.eps == 0:
        return x.clone()
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    grad = input_gradient(model, x, y, y_target=y_target, loss=loss, where="FGSM step 0")
    x_adv = threat.project(x + threat.eps * threat.ascent_direction(grad), x)
    if not torch.isfinite(x_adv).all():
        raise NumericalError("non-finite input gradient at FGSM step 0")
    return x_adv


@dataclass(frozen=True)
class FGSM:
    """Configuration of :func:`fgsm` for the CLI and training loops (holds no model)."""

    threat: LpBall
    loss: str = "ce"

    name: ClassVar[str] = "fgsm"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        get_loss(self.loss)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`fgsm`; ``generator`` is accepted for a uniform interface and unused (FGSM is deterministic)."""
        return fgsm(model, x, y, self.threat, y_target=y_target, loss=self.loss)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, for run records."""
        return {"attack": self.name, **threat_dict(self.threat), "loss": self.loss}

