"""The threat set as certifiers see it: the l_p ball around ``x`` intersected with the input box, in pixel space.

Bounds are taken over ``S(x) = {x' : ||x' - x||_p <= eps, lower <= x' <= upper}``, the set attacks search
(:class:`trustlab.LpBall`), in the units of the model's input even when the model normalises internally: the
normalisation is an elementwise affine layer of the network, not part of the threat (reliability-tests CERT-07;
auto_LiRPA #25).

For ``p = inf`` the set is the box ``[max(x - eps, lower), min(x + eps, upper)]``, and the minimum of a linear
function over it is exact. For ``p = 2`` two lower bounds are sound, each over a superset of ``S(x)``: over the
ball alone, ``lam x - eps ||lam||_2`` (Hoelder's inequality with the dual norm), and over the box that contains
the ball and is clipped to the domain; the certifiers take the larger of the two, so the box is used where it
helps and never makes a bound unsound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustlab.threat import LpBall

__all__ = ["input_box", "concretize", "apply_rows"]


def input_box(x: Tensor, threat: LpBall) -> tuple[Tensor, Tensor]:
    """Elementwise bounds ``(x_L, x_U)`` containing ``S(x)``: exact for ``p = inf``, the clipped outer box for 2.

    Shapes:
        x (N, *D) -> x_L, x_U (N, *D).
    """
    return threat.box(x)


def apply_rows(lam: Tensor, v: Tensor) -> Tensor:
    """``<lam[n, s], v[n]>`` for every example and row, with rows shared by all examples when ``B = 1``.

    Shapes:
        lam (B, S, D) with B in {1, N}, v (N, D) -> (N, S).
    """
    if lam.shape[0] == 1:
        return v @ lam[0].transpose(0, 1)  # (N, D) @ (D, S)
    return torch.bmm(lam, v.unsqueeze(2)).squeeze(2)


def concretize(lam: Tensor, x: Tensor, threat: LpBall) -> Tensor:
    """A lower bound of ``min_{x' in S(x)} <lam, x'>`` for every row.

    ``p = inf``: ``lam x_c - |lam| x_r`` with the box's centre and radius (exact). ``p = 2``: the larger of that
    (over the clipped outer box) and ``lam x - eps ||lam||_2`` (over the ball, dual norm).

    Args:
        lam: rows on the input, ``(B, S, *D)``, ``B`` in ``{1, N}``.
        x: the centres of the balls, ``(N, *D)``.
        threat: the perturbation set.

    Returns:
        ``(N, S)`` lower bounds; an upper bound is ``-concretize(-lam, x, threat)``.

    Shapes:
        lam (B, S, *D), x (N, *D) -> (N, S).

    Reference:
        Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with General
        Activation Functions" (CROWN), NeurIPS 2018, arXiv:1811.00866, Theorem 3.2 (the dual norm step).
    """
    flat = lam.flatten(2)  # (B, S, *D) -> (B, S, D)
    x_lo, x_hi = input_box(x, threat)
    mid, rad = ((x_hi + x_lo) / 2).flatten(1), ((x_hi - x_lo) / 2).flatten(1)
    box = apply_rows(flat, mid) - apply_rows(flat.abs(), rad)
    if threat.p == math.inf:
        return box
    ball = apply_rows(flat, x.flatten(1)) - threat.eps * flat.norm(p=2, dim=2)
    return torch.maximum(box, ball)
