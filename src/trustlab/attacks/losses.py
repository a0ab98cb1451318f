"""Per-example attack losses and the success criterion.

Every loss maps logits ``(N, K)`` and labels ``(N,)`` to a per-example value ``(N,)`` that an *untargeted* attack
maximizes. A targeted attack toward ``y_target`` maximizes ``-loss(logits, y_target)`` instead: for cross-entropy
that is the log-probability of the target, for the margin loss it is ``z_t - max_{j != t} z_j``. Both cases go
through :func:`objective`, so an attack loop is written once.

Reference:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", 2017, arXiv:1608.04644 (the margin
    loss, their f_6 without the confidence clamp).
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy", "margin", "LOSSES", "get_loss", "objective", "is_adversarial"]

Loss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``-log softmax(z)_y``.

    Shapes:
        logits (N, K), y (N,) -> (N,).
    """
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """The CW margin ``max_{j != y} z_j - z_y``: positive exactly when the example is misclassified.

    Shapes:
        logits (N, K) with K >= 2, y (N,) -> (N,).
    """
    y_col = y.unsqueeze(1)  # (N,) -> (N, 1)
    z_y = logits.gather(1, y_col).squeeze(1)
    others = logits.scatter(1, y_col, float("-inf"))  # mask the true class out of the max
    return others.amax(dim=1) - z_y


LOSSES: dict[str, Loss] = {"ce": cross_entropy, "margin": margin}


def get_loss(name: str) -> Loss:
    """The loss called ``name``; raises ``ValueError`` listing the choices for an unknown name."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}") from None


def objective(logits: Tensor, y: Tensor, *, y_target: Tensor | None = None, loss: str = "ce") -> Tensor:
    """The per-example quantity an attack maximizes.

    Untargeted: ``loss(logits, y)``. Targeted: ``-loss(logits, y_target)`` (raise the target's log-probability,
    or its margin ``z_t - max_{j != t} z_j``).

    Shapes:
        logits (N, K), y (N,), y_target (N,) or None -> (N,).
    """
    fn = get_loss(loss)
    if y_target is None:
        return fn(logits, y)
    return -fn(logits, y_target)


def is_adversarial(logits: Tensor, y: Tensor, *, y_target: Tensor | None = None) -> Tensor:
    """``(N,)`` bool: ``argmax != y`` (untargeted) or ``argmax == y_target`` (targeted)."""
    pred = logits.argmax(dim=1)
    return pred != y if y_target is None else pred == y_target
