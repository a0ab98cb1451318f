"""The closed-form worst-case perturbation of a linear classifier (the ground truth of FX-LIN)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustlab.attacks.base import check_attack_args, check_threat, threat_dict
from trustlab.threat import LpBall
from trustlab.validation import check_labels

__all__ = ["linear_attack", "Linear"]

_TINY = 1e-12


def linear_attack(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall) -> Tensor:
    """The exact worst-case perturbation of a linear model ``z = W x + b`` in an l_p ball.

    For each wrong class j the margin ``m_j = (w_y - w_j)·x + (b_y - b_j)`` is lowered most by
    ``delta_j = -eps * sign(w_y - w_j)`` (p = inf, by ``eps * ||w_y - w_j||_1``) or
    ``delta_j = -eps * (w_y - w_j) / ||w_y - w_j||_2`` (p = 2, by ``eps * ||w_y - w_j||_2``), the dual norm
    (Hölder). The attack takes the j with the smallest margin after that step, then clips to the box. A model
    with one logit (``z > 0`` means class 1) uses ``delta = -s * eps * sign(w)`` (or ``w / ||w||_2``), ``s = 2y - 1``.

    Guarantee:
        When the box is inactive (``x ± eps`` inside it), ``x_adv`` is misclassified (or tied) iff some point of
        the ball is: ``min_j (m_j - eps * ||w_y - w_j||_q) <= 0`` with q the dual exponent of p.

    Args:
        model: an ``nn.Linear`` on ``(N, D)`` inputs, or ``nn.Sequential(nn.Flatten(), nn.Linear)`` (or
            ``nn.Sequential(nn.Linear)``). Only read.
        x: clean inputs inside the box; not modified.
        y: true labels in ``[0, K)`` (``[0, 2)`` for one logit).
        threat: the perturbation set.

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``.

    Raises:
        ValueError: a model of another form, or inputs whose size does not match it; invalid x, y, threat.

    Shapes:
        x (N, *D) with prod(D) = in_features, y (N,) -> x_adv (N, *D).
    """
    layer = _linear_layer(model, x)
    check_attack_args(x, y, threat)
    if threat.eps == 0:
        return x.clone()
    w = layer.weight.detach().to(x.dtype)  # (K, D)
    b = layer.bias.detach().to(x.dtype) if layer.bias is not None else w.new_zeros(w.shape[0])
    k = w.shape[0]
    check_labels(y, len(x), max(k, 2))
    xf = x.detach().flatten(1)  # (N, *D) -> (N, D)
    if k == 1:
        s = (2 * y - 1).to(x.dtype).unsqueeze(1)  # (N, 1): +1 for class 1, -1 for class 0
        delta = -s * threat.eps * _unit_ascent(w.expand(len(x), -1), threat.p)
    else:
        delta = _worst_pair_delta(xf, y, w, b, threat)
    return threat.project(x.detach() + delta.view_as(x), x.detach())


def _worst_pair_delta(xf: Tensor, y: Tensor, w: Tensor, b: Tensor, threat: LpBall) -> Tensor:
    """``(N, D)`` perturbation lowering the smallest pairwise margin after the step, over wrong classes j."""
    z = xf @ w.T + b  # (N, K)
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    best_after = torch.full_like(z_y, math.inf)
    best_delta = torch.zeros_like(xf)
    for j in range(w.shape[0]):
        dw = w[y] - w[j]  # (N, D): w_y - w_j
        dual = dw.abs().sum(1) if threat.p == math.inf else dw.norm(dim=1)
        after = torch.where(y == j, math.inf, (z_y - z[:, j]) - threat.eps * dual)
        better = after < best_after
        delta_j = -threat.eps * _unit_ascent(dw, threat.p)
        best_delta = torch.where(better.unsqueeze(1), delta_j, best_delta)
        best_after = torch.where(better, after, best_after)
    return best_delta


def _unit_ascent(v: Tensor, p: float) -> Tensor:
    """Row-wise ``argmax_{||d||_p <= 1} <d, v>``: ``sign(v)`` or ``v / ||v||_2`` (``(N, D) -> (N, D)``)."""
    if p == math.inf:
        return v.sign()
    return v / v.norm(dim=1, keepdim=True).clamp_min(_TINY)


def _linear_layer(model: object, x: Tensor) -> nn.Linear:
    """The ``nn.Linear`` inside ``model``, after checking the model's form and the input size."""
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    flatten = len(layers) == 2 and isinstance(layers[0], nn.Flatten)
    flatten = flatten and layers[0].start_dim == 1 and layers[0].end_dim == -1
    if not (layers and isinstance(layers[-1], nn.Linear) and (len(layers) == 1 or flatten)):
        kinds = ", ".join(type(m).__name__ for m in layers)
        raise ValueError(
            f"linear_attack needs an nn.Linear or nn.Sequential(nn.Flatten(), nn.Linear), got "
            f"{type(model).__name__}({kinds})"
        )
    layer = layers[-1]
    if isinstance(x, Tensor) and x.dim() >= 2:
        if not flatten and x.dim() != 2:
            raise ValueError(f"an nn.Linear model needs x of shape (N, {layer.in_features}), got {tuple(x.shape)}")
        if x[0].numel() != layer.in_features:
            raise ValueError(
                f"x has {x[0].numel()} features per example but the model expects {layer.in_features} "
                f"(x shape {tuple(x.shape)})"
            )
    return layer


@dataclass(frozen=True)
class Linear:
    """Configuration of :func:`linear_attack` (holds no model)."""

    threat: LpBall

    name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        check_threat(self.threat)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`linear_attack`; it is untargeted and deterministic, so ``generator`` is unused."""
        if y_target is not None:
            raise ValueError("the linear attack is untargeted; y_target must be None")
        return linear_attack(model, x, y, self.threat)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, for run records."""
        return {"attack": self.name, **threat_dict(self.threat)}
