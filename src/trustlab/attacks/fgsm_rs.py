"""FGSM from a uniform random start (Wong, Rice & Kolter 2020): the single-step attack of fast adversarial training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustlab.attacks.base import (
    check_attack_args,
    check_model,
    check_step_size,
    check_threat,
    input_gradient,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.losses import get_loss
from trustlab.attacks.pgd import DEFAULT_SEED
from trustlab.errors import NumericalError
from trustlab.threat import LpBall

__all__ = ["fgsm_rs", "FGSMRS", "STEP_FACTOR"]

STEP_FACTOR = 1.25  # Wong et al. 2020, Algorithm 3: alpha = 1.25 * eps


def fgsm_rs(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    step_size: float | None = None,
    y_target: Tensor | None = None,
    loss: str = "ce",
    generator: torch.Generator | None = None,
) -> Tensor:
    """FGSM from a uniform random start, returning the last iterate.

    Algorithm 3 of Wong et al.: ``delta ~ U(B_eps)``; ``delta <- Proj(delta + alpha * d)`` with ``d`` the
    steepest-ascent direction of the mean loss at ``x + delta`` (``sign(grad)`` for p = inf) and
    ``alpha = 1.25 * eps`` unless ``step_size`` is given (the authors' advice against catastrophic overfitting is
    to lower it). One forward and one backward pass and no best-iterate selection: this is the training step of
    the paper, a weak evaluation attack (evaluate with ``pgd``).

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``; run in eval mode (warned if it is not), its mode restored.
        x: clean inputs inside ``[threat.lower, threat.upper]``; not modified.
        y: true labels ``(N,)``.
        threat: the perturbation set.
        step_size: ``alpha`` in the threat norm; ``None`` means ``1.25 * eps``.
        y_target: if given, step toward these classes.
        loss: a key of :data:`trustlab.attacks.LOSSES`.
        generator: the source of the random start; ``None`` uses a fresh generator on ``x.device`` seeded with
            ``DEFAULT_SEED``, never the global RNG.

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments (INP-01..09).
        NumericalError: NaN or Inf in the logits, loss or gradient.

    Shapes:
        x (N, *D), y (N,) -> x_adv (N, *D).

    Reference:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020,
        arXiv:2001.03994, Algorithm 3.
    """
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    step_size = check_step_size(step_size)
    get_loss(loss)
    if threat.eps == 0:
        return x.clone()
    alpha = STEP_FACTOR * threat.eps if step_size is None else step_size
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    x_0 = threat.random_init(x, generator=generator)
    grad = input_gradient(model, x_0, y, y_target=y_target, loss=loss, where="FGSM-RS step 0", mean=True)
    x_adv = threat.project(x_0.detach() + alpha * threat.ascent_direction(grad), x).detach()
    if not torch.isfinite(x_adv).all():
        raise NumericalError("non-finite input gradient at FGSM-RS step 0")
    return x_adv


@dataclass(frozen=True)
class FGSMRS:
    """Configuration of :func:`fgsm_rs` for the CLI and training loops (holds no model)."""

    threat: LpBall
    step_size: float | None = None
    loss: str = "ce"

    name: ClassVar[str] = "fgsm-rs"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        object.__setattr__(self, "step_size", check_step_size(self.step_size))
        get_loss(self.loss)

    @property
    def resolved_step_size(self) -> float:
        """The step the attack takes: ``step_size``, or ``1.25 * eps``."""
        return STEP_FACTOR * self.threat.eps if self.step_size is None else self.step_size

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`fgsm_rs` with this configuration."""
        return fgsm_rs(model, x, y, self.threat, step_size=self.step_size, y_target=y_target, loss=self.loss,
                       generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the resolved step size, for run records."""
        return {"attack": self.name, **threat_dict(self.threat), "step_size": self.resolved_step_size,
                "loss": self.loss}
