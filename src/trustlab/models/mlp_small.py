"""Small fully connected ReLU networks for the verifiers that solve a program per example (LP, MILP, SDP).

The lecture's and Raghunathan et al.'s (2018) nets: one hidden layer of 50 or 100 units (784-50-10,
784-100-10 on MNIST), where exact MILP and the SDP relaxation are affordable, and two or three hidden layers of 100,
where intermediate bounds start to matter (the ReLUs of each later layer are bounded by a relaxation of those below).
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from trustlab.models._shapes import check_in_shape, check_num_classes

__all__ = ["small_mlp", "mlp_1x50", "mlp_1x100", "mlp_2x100", "mlp_3x100"]


def small_mlp(*, in_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """Flatten, then ``Linear, ReLU`` per entry of ``hidden``, then ``Linear(hidden[-1], K)``.

    Args:
        in_shape: ``(C, H, W)`` of one input; ``d = C * H * W``.
        num_classes: number of logits ``K``.
        hidden: the widths of the hidden layers, each ``>= 1``.

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Raises:
        TypeError, ValueError: if ``in_shape``, ``num_classes`` or ``hidden`` is invalid.
    """
    if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of widths >= 1, got {hidden!r}")
    width = math.prod(check_in_shape(in_shape, min_hw=1, model="mlp"))
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, check_num_classes(num_classes)))


mlp_1x50 = partial(small_mlp, hidden=(50,))
mlp_1x100 = partial(small_mlp, hidden=(100,))
mlp_2x100 = partial(small_mlp, hidden=(100, 100))
mlp_3x100 = partial(small_mlp, hidden=(100, 100, 100))
