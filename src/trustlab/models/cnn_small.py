"""The small convolutional network of Wong & Kolter (2018) and Wong et al. (2020) for MNIST."""

from __future__ import annotations

from torch import nn

from trustlab.models._shapes import check_in_shape, check_num_classes, conv_out

__all__ = ["cnn_small"]


def cnn_small(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Two stride-2 convolutions and two linear layers.

    Conv2d(C, 16, 4, stride 2, padding 1), ReLU, Conv2d(16, 32, 4, stride 2, padding 1), ReLU, Flatten,
    Linear(32 * h * w, 100), ReLU, Linear(100, K). Each convolution halves the side (rounding down), so
    ``h, w = 7, 7`` for MNIST, ``8, 8`` for CIFAR-10 and ``2, 2`` for 8x8 digits.

    Args:
        in_shape: ``(C, H, W)`` of one input, with ``H, W >= 4``.
        num_classes: number of logits ``K``.

    Returns:
        An ``nn.Sequential`` mapping inputs in ``[0, 1]`` to logits.

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Raises:
        TypeError, ValueError: if ``in_shape`` or ``num_classes`` is invalid, or ``H`` or ``W`` < 4.

    Reference:
        Wong & Kolter, "Provable defenses against adversarial examples via the convex outer adversarial
        polytope", ICML 2018 (arXiv:1711.00851); Wong, Rice & Kolter, "Fast is better than free", ICLR 2020
        (arXiv:2001.03994), ``mnist_net`` in locuslab/fast_adversarial.
    """
    c, h, w = check_in_shape(in_shape, min_hw=4, model="cnn-small")
    k = check_num_classes(num_classes)
    for _ in range(2):
        h, w = conv_out(h, kernel=4, stride=2, padding=1), conv_out(w, kernel=4, stride=2, padding=1)
    return nn.Sequential(
        nn.Conv2d(c, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),  # (N, 32, h, w) -> (N, 32*h*w)
        nn.Linear(32 * h * w, 100),
        nn.ReLU(),
        nn.Linear(100, k),
    )
