"""Inner maximizers for adversarial training, by registry name.

Adversarial training solves ``min_theta E[max_{delta in Delta} loss(f_theta(x + delta), y)]`` (Madry et al. 2018,
arXiv:1706.06083). By Danskin's theorem the gradient of the inner max is the gradient of the loss at the
maximizer, so each step attacks the batch and then descends on the loss at ``x_adv``.

- ``none``: standard ERM.
- ``fgsm``: FGSM from ``x``, no random start, step ``eps`` (Goodfellow et al. 2015; as in the lecture). Uses the
  true label, so it can show label leaking (Kurakin et al. 2017).
- ``fgsm-rs``: FGSM from a uniform random start with step ``1.25 * eps`` (Wong, Rice & Kolter 2020,
  "Fast is better than free", arXiv:2001.03994, Algorithm 3), or ``pgd_step_size`` when given: the authors'
  advice against catastrophic overfitting is to lower this step.
- ``pgd``: PGD with random start, ``pgd_steps`` steps of ``pgd_step_size`` (Madry et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from trustlab.attacks import fgsm, pgd
from trustlab.threat import LpBall

__all__ = ["DEFENSES", "make_inner_max", "fgsm_rs"]

DEFENSES = ("none", "fgsm", "fgsm-rs", "pgd")

InnerMax = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]


def fgsm_rs(
    model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *, step_factor: float = 1.25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FGSM from a uniform random start, step ``step_factor * eps``, returning the last iterate.

    ``delta ~ U(B_eps)``; ``delta <- Proj(delta + alpha * sign(grad_delta loss))`` with ``alpha = 1.25 eps``
    (Wong, Rice & Kolter 2020, arXiv:2001.03994, Algorithm 3). One forward and one backward pass, no best-iterate
    selection: this is the training step of the paper, not an evaluation attack (use ``pgd`` to evaluate).
    """
    x_0 = threat.random_init(x.detach(), generator=generator).requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x_0), y)
    (grad,) = torch.autograd.grad(loss, x_0)
    return threat.project(x_0.detach() + step_factor * threat.eps * threat.ascent_direction(grad), x).detach()


def make_inner_max(
    defense: str, threat: LpBall, *, pgd_steps: int = 10, pgd_step_size: float | None = None
) -> InnerMax | None:
    """The attack used inside training for ``defense`` (``None`` for standard training).

    Raises:
        ValueError: unknown defense name.
    """
    if defense == "none":
        return None
    if defense == "fgsm":
        return lambda model, x, y, generator: fgsm(model, x, y, threat)
    if defense == "fgsm-rs":  # a given step size replaces 1.25 * eps (lower it if training overfits catastrophically)
        factor = 1.25 if pgd_step_size is None or threat.eps == 0 else pgd_step_size / threat.eps
        return lambda model, x, y, generator: fgsm_rs(model, x, y, threat, step_factor=factor, generator=generator)
    if defense == "pgd":
        return lambda model, x, y, generator: pgd(
            model, x, y, threat, steps=pgd_steps, step_size=pgd_step_size, random_start=True, generator=generator
        )
    raise ValueError(f"unknown defense {defense!r}; choose one of {list(DEFENSES)}")
