"""Up-front checks of user tensors, shared by attacks, training and evaluation.

Every public entry point validates before computing, so that bad input fails with a message naming the value
instead of producing a misleading number (torchattacks #145, pytorch #43840).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_inputs", "check_labels", "check_positive_int", "check_nonneg_float", "DOMAIN_ATOL"]

DOMAIN_ATOL = 1e-6  # float32 slack for values that should lie in [lower, upper] (IQA-PyTorch #240)


def check_inputs(x: Tensor, *, lower: float | None = 0.0, upper: float | None = 1.0, name: str = "x") -> None:
    """Raise unless ``x`` is a non-empty batched float tensor, finite, inside ``[lower, upper]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; use x.float() / 255 for pixels")
    if x.dim() < 2:
        raise ValueError(f"{name} must be batched with shape (N, *D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    if (lower is not None and lo < lower - DOMAIN_ATOL) or (upper is not None and hi > upper + DOMAIN_ATOL):
        raise ValueError(
            f"inputs must lie in [{lower}, {upper}] (got min={lo:.6g}, max={hi:.6g}); "
            "pass raw pixels and put normalization inside the model"
        )


def check_labels(y: Tensor, n: int, num_classes: int | None = None, *, name: str = "y") -> None:
    """Raise unless ``y`` is an integer ``(n,)`` tensor with values in ``[0, num_classes)``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if num_classes is not None and n:
        lo, hi = int(y.min()), int(y.max())
        bad = lo if lo < 0 else hi
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"label {bad} out of range [0, {num_classes}) in {name}")


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer ``>= minimum``, else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_nonneg_float(value: object, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as float if finite and ``>= 0`` (``> 0`` when ``positive``), else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return v
