"""alpha-CROWN: CROWN with the lower slopes of the unstable ReLUs optimised, never looser than CROWN.

Algorithm (Xu et al. 2021, Sec. 3.1): every lower line ``alpha z`` with ``alpha`` in ``[0, 1]`` is a valid
relaxation of an unstable ReLU, so any choice of slopes gives a sound bound. alpha-CROWN keeps one slope per
unstable neuron *and per specification row*, starts from CROWN's adaptive slopes, and maximises the lower bound
of every row by projected gradient ascent (Adam steps, then clipping to ``[0, 1]``), keeping each row's best
iterate. The pre-activation bounds are CROWN's and stay fixed (auto_LiRPA's default ``fix_interm_bounds``).
The returned bound is the elementwise maximum of the optimised bound and CROWN's, so it is never looser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from trustlab.certify.backsub import Interval, adaptive_slope
from trustlab.certify.config import BoundMethod
from trustlab.certify.crown import crown_intermediate, output_bounds
from trustlab.certify.network import Network, prepare
from trustlab.certify.result import Bounds
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["alpha_crown_bounds", "AlphaCROWN", "DEFAULT_STEPS", "DEFAULT_STEP_SIZE"]

DEFAULT_STEPS = 20  # auto_LiRPA's default number of alpha iterations
DEFAULT_STEP_SIZE = 0.1
_BETAS = (0.9, 0.999)  # Adam (Kingma & Ba 2015), as in the reference implementation
_ADAM_EPS = 1e-8


def alpha_crown_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None,
                       steps: int = DEFAULT_STEPS, step_size: float = DEFAULT_STEP_SIZE) -> Bounds:
    """alpha-CROWN bounds on ``C f(x')`` over the threat set around each example.

    Args:
        network: a :class:`~trustlab.certify.Network`, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf or l_2 ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.
        steps: projected gradient steps on the slopes (``>= 0``; 0 gives CROWN).
        step_size: Adam's step size on the slopes (``> 0``).

    Returns:
        :class:`~trustlab.certify.Bounds` with lower and upper of shape ``(N, S)``, each at least as tight
        as CROWN's; differentiable in the network's parameters at the optimised slopes.

    Raises:
        UnsupportedLayerError: the model has layers it cannot bound (listed).
        TypeError, ValueError: invalid arguments.

    Shapes:
        x (N, *D), spec (N, S, K) -> lower, upper (N, S).

    Reference:
        Xu, Zhang, Wang, Wang, Jana, Lin & Hsieh, "Fast and Complete: Enabling Complete Neural Network
        Verification with Rapid and Massively Parallel Incomplete Verifiers", ICLR 2021, arXiv:2011.13824,
        Sec. 3.1 (optimised CROWN, alpha-CROWN).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to floating-point rounding, and
        ``lower >= crown_bounds(...).lower``, ``upper <= crown_bounds(...).upper``.
    """
    steps = check_positive_int(steps, "steps", minimum=0)
    step_size = check_nonneg_float(step_size, "step_size", positive=True)
    network, rows = prepare(network, x, threat, spec)
    pre = crown_intermediate(network, x, threat)
    crown_lb = output_bounds(network, rows, pre, x, threat)
    if network.depth == 0 or steps == 0:
        return Bounds.from_stacked(crown_lb)
    fixed = [(lo.detach(), hi.detach()) for lo, hi in pre]
    best = _optimise_slopes(network, rows, fixed, x, threat, steps=steps, step_size=step_size)
    lb = torch.maximum(output_bounds(network, rows, pre, x, threat, alphas=best), crown_lb)
    return Bounds.from_stacked(lb)


def _optimise_slopes(network: Network, rows: Tensor, pre: Sequence[Interval], x: Tensor, threat: LpBall, *,
                     steps: int, step_size: float) -> list[Tensor]:
    """Projected Adam ascent on the sum of the rows' lower bounds; each row keeps its best slopes.

    Rows are independent (each has its own slopes), so ascending on the sum ascends on every row.

    Returns:
        The best slopes per ReLU layer, each ``(N, R, *shape_i)`` in ``[0, 1]``.
    """
    n, r = len(x), rows.shape[1]
    alphas = [adaptive_slope(lo, hi).unsqueeze(1).expand(n, r, *lo.shape[1:]).clone() for lo, hi in pre]
    best = [a.clone() for a in alphas]
    best_lb = torch.full((n, r), -math.inf, dtype=x.dtype, device=x.device)
    moments = [(torch.zeros_like(a), torch.zeros_like(a)) for a in alphas]
    for t in range(steps + 1):
        with torch.enable_grad():
            params = [a.detach().requires_grad_(t < steps) for a in alphas]
            lb = output_bounds(network, rows, pre, x, threat, alphas=params)
            grads = torch.autograd.grad(lb.sum(), params) if t < steps else ()
        lb = lb.detach()
        improved = lb > best_lb
        best_lb = torch.where(improved, lb, best_lb)
        for b, a in zip(best, alphas):
            mask = improved.view(n, r, *([1] * (a.dim() - 2)))  # (N, R) -> (N, R, 1, ...)
            b.copy_(torch.where(mask, a, b))
        for i, (g, (m1, m2)) in enumerate(zip(grads, moments)):
            m1.mul_(_BETAS[0]).add_(g, alpha=1 - _BETAS[0])
            m2.mul_(_BETAS[1]).addcmul_(g, g, value=1 - _BETAS[1])
            m1_hat, m2_hat = m1 / (1 - _BETAS[0] ** (t + 1)), m2 / (1 - _BETAS[1] ** (t + 1))
            alphas[i] = (alphas[i] + step_size * m1_hat / (m2_hat.sqrt() + _ADAM_EPS)).clamp(0.0, 1.0)
    return best


@dataclass(frozen=True)
class AlphaCROWN(BoundMethod):
    """Configuration of :func:`alpha_crown_bounds`."""

    steps: int = DEFAULT_STEPS
    step_size: float = DEFAULT_STEP_SIZE

    name: ClassVar[str] = "alpha-crown"
    function = staticmethod(alpha_crown_bounds)

    def __post_init__(self) -> None:
        check_positive_int(self.steps, "steps", minimum=0)
        object.__setattr__(self, "step_size", check_nonneg_float(self.step_size, "step_size", positive=True))
