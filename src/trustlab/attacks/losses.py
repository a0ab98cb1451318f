"""Per-example attack losses and the success criterion.

Every loss maps logits ``(N, K)`` and labels ``(N,)`` to a per-example value ``(N,)`` that an *untargeted* attack
maximizes. A targeted attack toward ``y_target`` maximizes ``-loss(logits, y_target)`` instead: for cross-entropy
that is the log-probability of the target, for the margin loss it is ``z_t - max_{j != t} z_j``. Both cases go
through :func:`objective`, so an attack loop is written once. The one exception is ``"dlr-targeted"``, which is
defined only for a target and uses both labels: :func:`objective` returns it as it stands.

Reference:
    Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", 2017, arXiv:1608.04644 (the margin
    loss, their f_6 without the confidence clamp). Croce & Hein, "Reliable evaluation of adversarial robustness
    with an ensemble of diverse parameter-free attacks", ICML 2020, arXiv:2003.01690 (the DLR loss, eq. 6, and
    its targeted version, eq. 7).
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy", "margin", "dlr", "dlr_targeted", "LOSSES", "TARGETED_LOSSES", "get_loss", "objective",
           "is_adversarial"]

Loss = Callable[..., Tensor]  # (logits, y) -> (N,), or (logits, y, y_target) -> (N,) for TARGETED_LOSSES
_TINY = 1e-12  # keeps the DLR ratio finite when the largest and third-largest logits tie (as in the reference code)


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


def _sorted_logits(logits: Tensor, k_min: int, name: str) -> Tensor:
    """The logits of each row in decreasing order, ``z_pi1 >= z_pi2 >= ...``; needs ``K >= k_min`` classes."""
    k = logits.shape[1]
    if k < k_min:
        raise ValueError(f"the {name} loss needs K >= {k_min} classes (it divides by z_pi1 - z_pi{k_min}), got K={k}")
    return logits.sort(dim=1, descending=True).values


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """The difference of logits ratio (Croce & Hein 2020, eq. 6), ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``.

    Positive exactly when the example is misclassified, like the margin, but invariant to shifting the logits and
    to scaling them by a positive factor, so its size does not depend on how confident the model is.

    Raises:
        ValueError: ``K < 3``.

    Shapes:
        logits (N, K) with K >= 3, y (N,) -> (N,).
    """
    z_sorted = _sorted_logits(logits, 3, "DLR")
    return margin(logits, y) / (z_sorted[:, 0] - z_sorted[:, 2] + _TINY)


def dlr_targeted(logits: Tensor, y: Tensor, y_target: Tensor) -> Tensor:
    """The targeted DLR (Croce & Hein 2020, eq. 7), ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, to maximize.

    Raises:
        ValueError: ``K < 4``.

    Shapes:
        logits (N, K) with K >= 4, y (N,), y_target (N,) -> (N,).
    """
    z_sorted = _sorted_logits(logits, 4, "targeted DLR")
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, y_target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - (z_sorted[:, 2] + z_sorted[:, 3]) / 2 + _TINY)


LOSSES: dict[str, Loss] = {"ce": cross_entropy, "margin": margin, "dlr": dlr, "dlr-targeted": dlr_targeted}
TARGETED_LOSSES = frozenset({"dlr-targeted"})  # defined only with a target: fn(logits, y, y_target) is maximized


def get_loss(name: str) -> Loss:
    """The loss called ``name``; raises ``ValueError`` listing the choices for an unknown name."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}") from None


def objective(logits: Tensor, y: Tensor, *, y_target: Tensor | None = None, loss: str = "ce") -> Tensor:
    """The per-example quantity an attack maximizes.

    Untargeted: ``loss(logits, y)``. Targeted: ``-loss(logits, y_target)`` (raise the target's log-probability,
    or its margin ``z_t - max_{j != t} z_j``), except for the losses of :data:`TARGETED_LOSSES`, which are
    ``loss(logits, y, y_target)`` and need a target.

    Raises:
        ValueError: an unknown loss, or a loss of :data:`TARGETED_LOSSES` without ``y_target``.

    Shapes:
        logits (N, K), y (N,), y_target (N,) or None -> (N,).
    """
    fn = get_loss(loss)
    if loss in TARGETED_LOSSES:
        if y_target is None:
            raise ValueError(f"loss {loss!r} needs y_target (a targeted attack)")
        return fn(logits, y, y_target)
    if y_target is None:
        return fn(logits, y)
    return -fn(logits, y_target)


def is_adversarial(logits: Tensor, y: Tensor, *, y_target: Tensor | None = None) -> Tensor:
    """``(N,)`` bool: ``argmax != y`` (untargeted) or ``argmax == y_target`` (targeted)."""
    pred = logits.argmax(dim=1)
    return pred != y if y_target is None else pred == y_target
