"""Shi et al. (2021)'s fast certified training: IBP initialization and the warm-up regularizers.

Interval bounds of a network initialized for standard training (Kaiming, Xavier) explode with depth, which is why
IBP and CROWN-IBP needed hundreds of warm-up epochs. Shi et al. fix the expected growth of the interval radius:
with ``w ~ N(0, sigma^2)`` a ReLU layer maps an input radius ``Delta`` to ``E[Delta'] = n E|w| Delta / 2`` (half
the units active), and ``sigma = sqrt(2 pi) / n`` (``n`` the fan-in) makes ``n E|w| / 2 = n sigma sqrt(2/pi) / 2
= 1``. During the eps warm-up two regularizers keep the bounds tight and the ReLUs balanced:

- ``L_tightness``: per ReLU layer ``relu(tau - Delta_0 / Delta_i) / tau``, with ``Delta_i`` the mean radius of the
  layer's pre-activation interval and ``Delta_0`` that of the input box;
- ``L_relu``: per layer, the ratios of the mean (and of the variance) of the interval centres over the active
  neurons (``l > 0``) and over the inactive ones (``u < 0``), each folded into ``min(r, 1/r)`` and penalized
  below ``tau``;

averaged over the layers and weighted by ``lambda_0 (1 - eps_t / eps)``, which vanishes at the end of the ramp.

What is not here: their networks put BatchNorm after every layer (an architecture choice; trustlab's bounds use
BatchNorm's running statistics, see :mod:`trustlab.training.defenses.certified`), their eps schedule (an
exponential start, then linear; trustlab's loop ramps linearly), and their gradient clipping at norm 10.

Reference:
    Shi, Wang, Zhang, Yi & Hsieh, "Fast Certified Robust Training with Short Warmup", NeurIPS 2021,
    arXiv:2103.17268, Sec. 3.1 (IBP initialization), Sec. 3.3 (regularizers); their implementation
    (shizhouxing/Fast-Certified-Robust-Training, ``manual_init.py``, ``regularization.py``: the last layer keeps its
    initialization, biases are left as they are, a layer whose ratio is NaN is skipped in ``L_relu``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trustlab.certify import Network, to_network
from trustlab.certify.domain import input_box
from trustlab.certify.ibp import interval_bounds
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float

__all__ = ["ibp_initialize", "ibp_init_std", "warmup_regularizer", "DEFAULT_TOL"]

DEFAULT_TOL = 0.5  # tau of both regularizers (the authors' default)
_TINY = 1e-12  # the floor of a ratio's denominator, as in the reference implementation


def ibp_init_std(fan_in: int) -> float:
    """``sigma = sqrt(2 pi) / n``: the weight std that keeps the expected interval radius constant across a ReLU
    layer with fan-in ``n`` (Shi et al. 2021, Sec. 3.1).

    Raises:
        ValueError: ``fan_in < 1``.
    """
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"fan_in must be an int >= 1, got {fan_in!r}")
    return math.sqrt(2 * math.pi) / fan_in


def ibp_initialize(model: nn.Module, *, generator: torch.Generator) -> list[str]:
    """Redraw the weights of every ``Linear`` and ``Conv2d`` layer but the last from ``N(0, ibp_init_std(n)^2)``.

    The draws come from ``generator`` on the CPU and are copied to each weight's device and dtype; biases and the
    last (classification) layer keep their values.

    Args:
        model: the network, modified in place.
        generator: a CPU ``torch.Generator``.

    Returns:
        The names of the re-initialized weights, in module order.

    Raises:
        ValueError: the model has no ``Linear`` or ``Conv2d`` layer before its last one.

    Reference:
        Shi et al. 2021, arXiv:2103.17268, Sec. 3.1.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(layers) < 2:
        raise ValueError(f"IBP initialization redraws every affine layer but the last; {type(model).__name__} has "
                         f"{len(layers)} Linear/Conv2d layer(s)")
    done = []
    with torch.no_grad():
        for name, layer in layers[:-1]:
            weight = layer.weight
            fan_in = weight[0].numel()  # in_features, or in_channels / groups * kernel area
            draw = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * ibp_init_std(fan_in)
            weight.copy_(draw.to(device=weight.device, dtype=weight.dtype))
            done.append(f"{name}.weight" if name else "weight")
    return done


def warmup_regularizer(network: Network | nn.Module, x: Tensor, threat: LpBall, *, tol: float = DEFAULT_TOL) -> Tensor:
    """``L_tightness + L_relu`` on the interval bounds of every ReLU's input (unweighted).

    Args:
        network: a :class:`~trustlab.certify.Network`, or an eval-mode model that converts to one (its
            parameters receive the gradients).
        x: the batch ``(N, *D)``.
        threat: the batch's threat (the current eps of the ramp).
        tol: ``tau > 0``.

    Returns:
        A scalar; zero for a network without ReLU.

    Raises:
        ValueError: ``tol <= 0``.
        UnsupportedLayerError: the model does not convert to a network.

    Reference:
        Shi et al. 2021, arXiv:2103.17268, Sec. 3.3, eqs. for ``L_tightness`` and ``L_relu``.
    """
    tol = check_nonneg_float(tol, "tol", positive=True)
    pre, _, _ = interval_bounds(to_network(network, x), x, threat)
    total = x.new_zeros(())
    if not pre:
        return total
    x_lo, x_hi = input_box(x, threat)
    delta_0 = ((x_hi - x_lo) / 2).mean()
    for lower, upper in pre:
        delta = ((upper - lower) / 2).mean()
        total = total + F.relu(tol - delta_0 / delta.clamp(min=_TINY)) / tol
        relu = _relu_balance(lower, upper, tol)
        if torch.isfinite(relu):
            total = total + relu
    return total / len(pre)


def _relu_balance(lower: Tensor, upper: Tensor, tol: float) -> Tensor:
    """``L_relu`` of one layer: the mean and the variance of the centres, active against inactive neurons."""
    centre = (upper + lower) / 2
    active, inactive = lower > 0, upper < 0
    mean_ratio = (centre * active).mean() / -(centre * inactive).mean()
    spread = (centre - centre.mean()) ** 2
    var_ratio = (spread * active).sum() / (spread * inactive).sum()
    mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio.clamp(min=_TINY))
    var_ratio = torch.minimum(var_ratio, 1 / var_ratio.clamp(min=_TINY))
    return (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
