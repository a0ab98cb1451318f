"""``cnn-small`` behind an input quantization: a deliberately gradient-masked model for testing evaluations."""

from __future__ import annotations

from torch import nn

from trustlab.models.cnn_small import cnn_small
from trustlab.models.preprocess import InputQuantization

__all__ = ["cnn_small_quantized", "QUANTIZATION_LEVELS"]

QUANTIZATION_LEVELS = 5  # round(4x) / 4, reliability-tests.md FX-MASK(a)


def cnn_small_quantized(*, in_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """:class:`~trustlab.models.preprocess.InputQuantization` to 5 grey levels, then :func:`cnn_small`.

    The quantization has no parameters and a zero gradient almost everywhere: trained normally, the model is an
    ordinary non-robust classifier whose gradient attacks stall (the evaluation checks flag it), while a
    gradient-free attack (Square) or PGD through BPDA (``trustlab attack --bpda``) breaks it. It exists to show
    that an evaluation is not fooled; it is no defense.

    Args:
        in_shape: ``(C, H, W)`` of one input, with ``H, W >= 4``.
        num_classes: number of logits ``K``.

    Returns:
        An ``nn.Sequential``: the quantization at index 0, then the layers of :func:`cnn_small`.

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML 2018,
        arXiv:1802.00420.
    """
    return nn.Sequential(InputQuantization(QUANTIZATION_LEVELS),
                         *cnn_small(in_shape=in_shape, num_classes=num_classes))
