"""Input-shape checks and output-size arithmetic shared by the architecture builders."""

from __future__ import annotations

__all__ = ["check_in_shape", "check_num_classes", "conv_out"]


def check_in_shape(in_shape: tuple[int, int, int], *, min_hw: int, model: str) -> tuple[int, int, int]:
    """Return ``in_shape`` as a ``(C, H, W)`` tuple of ints, or raise naming it.

    Args:
        in_shape: the shape of one input image, without the batch dimension.
        min_hw: the smallest height and width the architecture can take.
        model: the architecture's name, for the message.

    Returns:
        ``(C, H, W)``.

    Raises:
        TypeError: if ``in_shape`` is not a sequence of three ints.
        ValueError: if a dimension is < 1, or H or W is below ``min_hw``.
    """
    if isinstance(in_shape, (str, bytes)) or not hasattr(in_shape, "__len__") or len(in_shape) != 3:
        raise TypeError(f"in_shape must be (C, H, W), got {in_shape!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) for d in in_shape):
        raise TypeError(f"in_shape must hold ints, got {in_shape!r}")
    c, h, w = (int(d) for d in in_shape)
    if c < 1:
        raise ValueError(f"in_shape {tuple(in_shape)} must have at least one channel")
    if h < min_hw or w < min_hw:
        raise ValueError(f"in_shape {tuple(in_shape)} is too small for {model}: height and width must be >= {min_hw}")
    return c, h, w


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` if it is an int >= 2, else raise naming it."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return num_classes


def conv_out(size: int, *, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling along one axis: ``floor((size + 2p - k) / s) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1
