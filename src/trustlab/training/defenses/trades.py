"""TRADES (Zhang et al. 2019): clean cross-entropy plus beta times the KL divergence between the clean and the
adversarial predictions, with the inner maximization on that KL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trustlab.attacks import default_step_size
from trustlab.attacks.base import check_step_size, check_steps, eval_mode
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense
from trustlab.validation import check_nonneg_float

__all__ = ["TRADES", "trades_inner_max", "START_STD"]

START_STD = 0.001  # the random start x + 0.001 * N(0, I) of the reference implementation


def trades_inner_max(
    model: nn.Module, x: Tensor, threat: LpBall, *, steps: int, step_size: float, generator: torch.Generator
) -> Tensor:
    """``argmax_{x' in B(x, eps)} KL(f(x) || f(x'))`` by projected steepest ascent from ``x + 0.001 * N(0, I)``.

    The label is not used: the inner problem pushes the prediction away from the model's own clean prediction,
    which is what makes TRADES trade accuracy for a smooth decision boundary. Runs under the caller's mode
    (the defense calls it in eval mode) and returns a detached ``x_adv`` in the ball and the box.

    Shapes:
        x (N, *D) -> x_adv (N, *D).
    """
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
        noise = threat.gaussian(x, generator=generator)
        x_adv = threat.project(x + START_STD * noise, x)
    for _ in range(steps):
        with torch.enable_grad():
            x_in = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_in), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(kl, x_in)
        x_adv = threat.project(x_adv.detach() + step_size * threat.ascent_direction(grad), x)
    return x_adv.detach()


@register_defense
@dataclass(frozen=True)
class TRADES(Defense):
    """``min_theta E[CE(f(x), y) + beta * max_{x' in B(x, eps)} KL(f(x) || f(x'))]``.

    The loss is the paper's eq. (5) with ``1/lambda = beta``; the KL is averaged over the batch. The logits
    returned are those on ``x_adv`` (the robust term's inputs), so ``train_acc`` is accuracy on them. The clean
    prediction in the KL is not detached, as in the reference implementation.

    Args:
        beta: weight of the robust (KL) term; the paper's MNIST and CIFAR-10 setting is 6.
        steps: inner ascent steps on the KL.
        step_size: inner step at the full eps; ``None`` means ``2.5 * eps / steps``.

    Reference:
        Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness and
        Accuracy", ICML 2019, arXiv:1901.08573 (eq. 5, Algorithm 1).
    """

    name = "trades"
    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", check_nonneg_float(self.beta, "beta"))
        if check_steps(self.steps) < 1:
            raise ValueError(f"steps must be >= 1 for TRADES, got {self.steps}")
        object.__setattr__(self, "step_size", check_step_size(self.step_size))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        step = default_step_size(threat.eps, self.steps) if self.step_size is None else self.step_size
        with eval_mode(model):
            x_adv = trades_inner_max(model, x, threat, steps=self.steps, step_size=step, generator=generator)
        logits = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust, logits_adv
