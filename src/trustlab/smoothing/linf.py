"""The l_inf view of an l_2 certificate: ``|delta|_2 <= sqrt(d) |delta|_inf``, so an l_2 radius ``R`` certifies
the l_inf ball of radius ``R / sqrt(d)``, which shrinks with the input dimension ``d``.

At ``d = 784`` (MNIST) an l_2 radius of 1.0 gives l_inf 0.036; at ``d = 3072`` (CIFAR-10) 0.018; at
``d = 150528`` (ImageNet, 224 x 224 x 3) 0.0026. Yang et al. (2020, Sec. 5) show this is not a weakness of the
conversion only: without more than label statistics, no smoothing distribution certifies l_inf radii beyond
``O(1 / sqrt(d))`` times the l_2 scale for large ``d``.

Reference:
    Yang, Duan, Hu, Salman, Razenshteyn & Li, "Randomized Smoothing of All Shapes and Sizes", ICML 2020,
    arXiv:2002.08118 (Sec. 5, limits in high dimension). Kumar, Levine, Goldstein & Feizi, "Curse of
    Dimensionality on Randomized Smoothing for Certifiable Robustness", ICML 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["linf_radius_from_l2", "plot_linf_shrinkage", "DIMENSIONS"]

DIMENSIONS = {"MNIST": 784, "CIFAR-10": 3072, "ImageNet": 150528}


def linf_radius_from_l2(radius: float | np.ndarray, d: int) -> float | np.ndarray:
    """The l_inf radius certified by an l_2 radius in dimension ``d``: ``radius / sqrt(d)``.

    Args:
        radius: l_2 radii, ``>= 0`` (a number or an array).
        d: the input dimension, ``>= 1``.

    Returns:
        ``radius / sqrt(d)``, of the same type.

    Raises:
        ValueError: ``d`` is not an int ``>= 1``, or a radius is negative or NaN.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be an int >= 1, got {d!r}")
    r = np.asarray(radius, dtype=np.float64)
    if np.isnan(r).any() or (r < 0).any():
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    out = r / math.sqrt(d)
    return float(out) if np.ndim(radius) == 0 else out


def plot_linf_shrinkage(radii_l2: Sequence[float] = tuple(np.linspace(0.0, 2.0, 9)),
                        dims: Sequence[int] = tuple(DIMENSIONS.values()), *,
                        path: str | Path | None = None) -> bytes:
    """A figure of the l_inf radius implied by each l_2 radius, one line per dimension (log scale).

    Args:
        radii_l2: the l_2 radii on the x axis.
        dims: the dimensions (default MNIST 784, CIFAR-10 3072, ImageNet 150528).
        path: also write the PNG there (atomically).

    Returns:
        The PNG bytes.

    Raises:
        ValueError: an invalid radius or dimension.
        MissingDependencyError: matplotlib is not installed.
    """
    from trustlab.reports.plots import _figure, _finish

    r = np.asarray(radii_l2, dtype=np.float64)
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    names = {v: k for k, v in DIMENSIONS.items()}
    for d in dims:
        label = f"d = {d}" + (f" ({names[d]})" if d in names else "")
        ax.plot(r, linf_radius_from_l2(r, d), marker="o", label=label)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("certified l2 radius")
    ax.set_ylabel("implied l_inf radius  (l2 / sqrt(d))")
    ax.set_title("an l2 certificate seen in l_inf shrinks as 1/sqrt(d)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _finish(fig, path)
