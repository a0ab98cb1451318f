"""The convolutional network of Madry et al. (2018) for MNIST."""

from __future__ import annotations

from torch import nn

from trustlab.models._shapes import check_in_shape, check_num_classes

__all__ = ["cnn_large"]


def cnn_large(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Two 5x5 convolutions with 2x2 max pooling, then a 1024-unit hidden layer.

    Conv2d(C, 32, 5, padding 2), ReLU, MaxPool2d(2), Conv2d(32, 64, 5, padding 2), ReLU, MaxPool2d(2),
    Flatten, Linear(64 * h * w, 1024), ReLU, Linear(1024, K). The convolutions keep the size and each pooling
    halves it (rounding down): ``h, w = 7, 7`` for MNIST, ``8, 8`` for CIFAR-10, ``2, 2`` for 8x8 digits.

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
        Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards deep learning models resistant to adversarial
        attacks", ICLR 2018 (arXiv:1706.06083), the MNIST model of MadryLab/mnist_challenge.
    """
    c, h, w = check_in_shape(in_shape, min_hw=4, model="cnn-large")
    k = check_num_classes(num_classes)
    h, w = h // 4, w // 4  # two 2x2 poolings, floor each time
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),  # (N, 64, h, w) -> (N, 64*h*w)
        nn.Linear(64 * h * w, 1024),
        nn.ReLU(),
        nn.Linear(1024, k),
    )
