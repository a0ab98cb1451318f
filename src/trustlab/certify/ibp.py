"""Interval bound propagation (IBP): a box through every layer, the last one merged with the specification.

Algorithm (Gowal et al. 2018, Sec. 3, eqs. 6-7): start from the box ``[x_L, x_U]`` of the threat set; an affine
operator maps a box with centre ``mu`` and radius ``r`` to ``(W mu + b, |W| r)``; a ReLU maps ``[l, u]`` to
``[relu(l), relu(u)]``. The last block is merged with the specification ``C`` (the margins ``f_y - f_j``), so
the margins are bounded as one affine function of the last hidden layer, not as differences of logit bounds.

For ``p = 2`` the first block is bounded with the dual norm, ``W_i x - eps ||W_i||_2``, intersected with the
box bound (:func:`trustlab.certify.domain.concretize`); interval arithmetic takes over after the first ReLU.
A network without ReLU is bounded exactly, as one affine function over the threat set.

IBP costs about two forward passes and is differentiable in the weights, which makes it the bound of choice for
certified training; it is inclusion-monotone in ``eps`` (CERT-06).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from trustlab.certify.backsub import Interval, backsubstitute, layer_bounds
from trustlab.certify.config import BoundMethod
from trustlab.certify.domain import apply_rows, input_box
from trustlab.certify.network import Network, prepare
from trustlab.certify.result import Bounds
from trustlab.threat import LpBall

__all__ = ["ibp_bounds", "interval_bounds", "IBP"]


def interval_bounds(network: Network, x: Tensor, threat: LpBall) -> tuple[list[Interval], Tensor, Tensor]:
    """IBP through all but the last block.

    Returns:
        The bounds ``(l_i, u_i)`` of every pre-activation ``z_1 .. z_L``, and the centre and radius of the box
        of the last block's input (the last ReLU's output, or the input box when ``L = 0``).

    Shapes:
        x (N, *D) -> l_i, u_i (N, *shape_i); centre, radius (N, *blocks[-1].in_shape).
    """
    x_lo, x_hi = input_box(x, threat)
    mid, rad = (x_hi + x_lo) / 2, (x_hi - x_lo) / 2
    pre: list[Interval] = []
    for i, block in enumerate(network.blocks[:-1]):
        if i == 0 and threat.p != math.inf:
            lower, upper = layer_bounds(network, 0, [], x, threat)
        else:
            mid_z, rad_z = block.interval(mid, rad)
            lower, upper = mid_z - rad_z, mid_z + rad_z
        pre.append((lower, upper))
        a_lo, a_hi = torch.relu(lower), torch.relu(upper)
        mid, rad = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
    return pre, mid, rad


def ibp_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None) -> Bounds:
    """Interval bounds on ``C f(x')`` over the threat set around each example.

    Args:
        network: a :class:`~trustlab.certify.Network`, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf or l_2 ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.

    Returns:
        :class:`~trustlab.certify.Bounds` with lower and upper of shape ``(N, S)``; differentiable in the
        network's parameters.

    Raises:
        UnsupportedLayerError: the model has layers IBP cannot bound (listed).
        TypeError, ValueError: invalid arguments.

    Shapes:
        x (N, *D), spec (N, S, K) -> lower, upper (N, S).

    Reference:
        Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann & Kohli, "On the Effectiveness of
        Interval Bound Propagation for Training Verifiably Robust Models", 2018, arXiv:1810.12715, eqs. 6-7
        and the elision of the last layer (Sec. 3).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to floating-point rounding.
    """
    network, rows = prepare(network, x, threat, spec)
    if network.depth == 0:
        lb = backsubstitute(network, 0, rows, [], x, threat)
    else:
        _, mid, rad = interval_bounds(network, x, threat)
        lam, const = network.blocks[-1].backward(rows)  # C merged with the last block
        lam, mid, rad = lam.flatten(2), mid.flatten(1), rad.flatten(1)
        lb = apply_rows(lam, mid) - apply_rows(lam.abs(), rad)
        lb = lb if const is None else lb + const
    return Bounds.from_stacked(lb)


@dataclass(frozen=True)
class IBP(BoundMethod):
    """Configuration of :func:`ibp_bounds` (it has no hyperparameters)."""

    name: ClassVar[str] = "ibp"
    function = staticmethod(ibp_bounds)
