"""A three-layer fully connected ReLU network."""

from __future__ import annotations

import math

from torch import nn

from trustlab.models._shapes import check_in_shape, check_num_classes

__all__ = ["mlp"]

HIDDEN = 256


def mlp(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Flatten, Linear(d, 256), ReLU, Linear(256, 256), ReLU, Linear(256, K).

    Args:
        in_shape: ``(C, H, W)`` of one input; ``d = C * H * W``.
        num_classes: number of logits ``K``.

    Returns:
        An ``nn.Sequential`` mapping inputs in ``[0, 1]`` to logits.

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Raises:
        TypeError, ValueError: if ``in_shape`` or ``num_classes`` is invalid.
    """
    d = math.prod(check_in_shape(in_shape, min_hw=1, model="mlp"))
    k = check_num_classes(num_classes)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, k),
    )
