"""CROWN: linear bounds by back-substitution with the adaptive ReLU relaxation, layer by layer.

Algorithm (Zhang et al. 2018, Sec. 3 and Theorem 3.2): for ``i = 1 .. L``, bound every neuron of the
pre-activation ``z_i`` by back-substituting the rows ``+e_k`` and ``-e_k`` through the ReLUs below it, relaxed
with the bounds already found for ``z_1 .. z_{i-1}``, down to the input, where the linear function is minimised
over the threat set (dual norm for l_2). Then bound the specification ``C f`` (margins ``f_y - f_j``, with
``C`` merged into the last affine block) the same way. Each unstable ReLU ``l < 0 < u`` gets the upper line
``u / (u - l) (z - l)`` and the lower line ``alpha z`` with CROWN's adaptive ``alpha = 1[u >= -l]``.

Cost: ``2 n_i`` rows per example for each hidden layer and ``2 S`` for the output
(:func:`trustlab.certify.backsub.crown_rows`); each row is one vector-Jacobian product through the layers below,
done with transposed convolutions on conv layers. Rows before the first ReLU are shared by the batch.

CROWN is not provably at least as tight as IBP on every network (reliability-tests CERT-03), and its adaptive
slopes make it not provably monotone in ``eps``; it is exact on a network without ReLU and at ``eps = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from trustlab.certify.backsub import Interval, backsubstitute, layer_bounds
from trustlab.certify.config import BoundMethod
from trustlab.certify.network import Network, prepare
from trustlab.certify.result import Bounds
from trustlab.threat import LpBall

__all__ = ["crown_bounds", "crown_intermediate", "output_bounds", "CROWN"]


def crown_intermediate(network: Network, x: Tensor, threat: LpBall) -> list[Interval]:
    """CROWN bounds ``(l_i, u_i)`` of every pre-activation ``z_1 .. z_L``, computed in order.

    Shapes:
        x (N, *D) -> l_i, u_i (N, *shape_i).
    """
    pre: list[Interval] = []
    for m in range(network.depth):
        pre.append(layer_bounds(network, m, pre, x, threat))
    return pre


def output_bounds(network: Network, rows: Tensor, pre: Sequence[Interval], x: Tensor, threat: LpBall, *,
                  alphas: Sequence[Tensor] | None = None) -> Tensor:
    """Lower bounds of ``rows . f(x')`` by back-substitution from the logits, given pre-activation bounds.

    Shapes:
        rows (B, R, K), B in {1, N} -> (N, R).
    """
    return backsubstitute(network, network.depth, rows, pre, x, threat, alphas=alphas)


def crown_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None) -> Bounds:
    """CROWN bounds on ``C f(x')`` over the threat set around each example.

    Args:
        network: a :class:`~trustlab.certify.Network`, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf or l_2 ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.

    Returns:
        :class:`~trustlab.certify.Bounds` with lower and upper of shape ``(N, S)``; differentiable in the
        network's parameters (the adaptive slopes are piecewise constant).

    Raises:
        UnsupportedLayerError: the model has layers CROWN cannot bound (listed).
        TypeError, ValueError: invalid arguments.

    Shapes:
        x (N, *D), spec (N, S, K) -> lower, upper (N, S).

    Reference:
        Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with General
        Activation Functions", NeurIPS 2018, arXiv:1811.00866, Theorem 3.2 and Sec. 3.2 (adaptive bounds).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to floating-point rounding.
    """
    network, rows = prepare(network, x, threat, spec)
    lb = output_bounds(network, rows, crown_intermediate(network, x, threat), x, threat)
    return Bounds.from_stacked(lb)


@dataclass(frozen=True)
class CROWN(BoundMethod):
    """Configuration of :func:`crown_bounds` (it has no hyperparameters)."""

    name: ClassVar[str] = "crown"
    function = staticmethod(crown_bounds)
