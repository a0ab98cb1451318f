"""Specification matrices: the linear functions of the logits that a certifier bounds.

Robustness of example ``n`` with label ``y_n`` is ``min_{j != y_n} f_y(x') - f_j(x') > 0`` over the threat set.
Certifiers bound each margin ``f_y - f_j = (e_y - e_j)^T f`` directly, with the row ``e_y - e_j`` merged into the
last affine layer, never by subtracting separate logit bounds (which loses the correlation between ``f_y`` and
``f_j``; Wong & Kolter 2018, Sec. 3.1; Gowal et al. 2018, Sec. 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["margin_spec", "other_classes", "check_spec"]


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """The classes ``j != y_n`` of each example, ascending: ``(N,) -> (N, K - 1)`` int64."""
    k = torch.arange(num_classes, device=y.device)
    others = k.expand(len(y), num_classes)
    return others[others != y.unsqueeze(1)].view(len(y), num_classes - 1)


def margin_spec(y: Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``C`` with rows ``e_{y_n} - e_j`` for every ``j != y_n``, so that ``C f = (f_y - f_j)_j``.

    Args:
        y: labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: ``K >= 2``.
        dtype: of the result.

    Returns:
        ``C`` of shape ``(N, K - 1, K)``, rows ordered by ascending ``j`` (as :func:`other_classes`).

    Shapes:
        y (N,) -> C (N, K - 1, K).
    """
    n = len(y)
    c = torch.zeros(n, num_classes - 1, num_classes, dtype=dtype, device=y.device)
    c.scatter_(2, y.view(n, 1, 1).expand(n, num_classes - 1, 1), 1.0)
    c.scatter_(2, other_classes(y, num_classes).unsqueeze(2), -1.0)
    return c


def check_spec(spec: Tensor | None, n: int, num_classes: int, like: Tensor) -> Tensor:
    """The rows to bound: ``spec`` validated, or the identity (the logits themselves) when it is ``None``.

    Args:
        spec: ``C`` of shape ``(N, S, K)``, or ``None``.
        n: the batch size ``N``.
        num_classes: ``K``.
        like: a tensor whose dtype and device the rows take.

    Returns:
        ``(N, S, K)``, or ``(1, K, K)`` (shared by all examples) for ``None``.

    Raises:
        TypeError: ``spec`` is not a floating-point tensor.
        ValueError: its shape is not ``(N, S, K)`` with ``S >= 1``, or it holds NaN or Inf.
    """
    if spec is None:
        return torch.eye(num_classes, dtype=like.dtype, device=like.device).unsqueeze(0)
    if not isinstance(spec, Tensor) or not spec.is_floating_point():
        raise TypeError(f"spec must be a floating-point tensor (N, S, K), got {type(spec).__name__}")
    if spec.dim() != 3 or spec.shape[0] != n or spec.shape[2] != num_classes or spec.shape[1] < 1:
        raise ValueError(f"spec must have shape (N={n}, S, K={num_classes}), got {tuple(spec.shape)}")
    if not torch.isfinite(spec).all():
        raise ValueError("spec contains NaN or Inf")
    return spec.to(dtype=like.dtype, device=like.device)
