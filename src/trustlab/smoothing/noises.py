"""Smoothing noises and the certified radius each implies, from a lower bound ``pA_lower`` of ``P(f(x + e) = cA)``.

Every radius here is the one for ``pB_upper = 1 - pA_lower`` (the form CERTIFY uses) and is 0 at
``pA_lower = 1/2``:

==========  =======================  =====  ===========================================================
noise       density                  norm   certified radius
==========  =======================  =====  ===========================================================
gaussian    N(0, sigma^2 I)          l_2    ``sigma * PhiInv(pA_lower)``  (Cohen et al. 2019, Thm. 1)
uniform     U[-lambda, lambda]^d     l_1    ``2 lambda (pA_lower - 1/2)``  (Yang et al. 2020, Table 1)
laplace     prop. exp(-|e|_1/lambda) l_1    ``-lambda log(2 (1 - pA_lower))``  (Teng et al. 2020, Thm. 1;
                                                 Yang et al. 2020, Table 1)
==========  =======================  =====  ===========================================================

The Laplace radius. Teng et al.'s Theorem 1 certifies ``max(lambda/2 log(pA/pB), -lambda log(1 - pA + pB))``;
with ``pB = 1 - pA`` the second term, ``-lambda log(2 (1 - pA))``, is never smaller (their difference is
``-log 2 - log(pA (1 - pA)) / 2 >= 0``), and it is the exact worst case in one dimension: for the half-line
classifier ``f(e) = 1[e <= t]`` with ``P(Laplace(0, lambda) <= t) = pA``, a shift of ``t = -lambda log(2 (1 - pA))``
moves ``P`` to exactly 1/2. The formula ``lambda log(pA / (1 - pA))`` is twice Teng et al.'s first term and is NOT
a valid radius (at ``pA = 0.6`` it gives 0.405 lambda where the exact worst case is 0.223 lambda); the tests pin
this.

Reference:
    Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918 (Theorem 1).
    Yang, Duan, Hu, Salman, Razenshteyn & Li, "Randomized Smoothing of All Shapes and Sizes", ICML 2020,
    arXiv:2002.08118 (Table 1; the authors' code ``rs4a``, ``noises.py``, has the same l_1 radii).
    Teng, Lee & Yuan, "l1 Adversarial Robustness Certificates: a Randomized Smoothing Approach", 2020
    (Theorem 1, Laplace noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import norm as normal
from torch import Tensor

from trustlab.validation import check_nonneg_float

__all__ = ["Noise", "GaussianNoise", "UniformNoise", "LaplaceNoise", "NOISES", "make_noise"]


@dataclass(frozen=True)
class Noise:
    """An additive smoothing noise of scale ``scale`` and the radius it certifies (subclass per distribution).

    Class attributes:
        name: the registry name.
        p: the norm of the certified radius (``2.0`` or ``1.0``).
    """

    scale: float
    name: ClassVar[str] = ""
    p: ClassVar[float] = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_nonneg_float(self.scale, "sigma", positive=True))

    def sample(self, shape: tuple[int, ...], *, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype) -> Tensor:
        """``shape`` i.i.d. noise values drawn from ``generator`` (which lives on ``device``)."""
        return self.sample_(torch.empty(shape, device=device, dtype=dtype), generator=generator)

    def sample_(self, out: Tensor, *, generator: torch.Generator) -> Tensor:
        """Overwrite ``out`` with i.i.d. noise values drawn from ``generator`` and return it: the same values
        :meth:`sample` gives for ``out``'s shape, without allocating (what CERTIFY's sampling loop uses)."""
        raise NotImplementedError

    def radius(self, pA_lower: np.ndarray) -> np.ndarray:
        """The certified radius (in the norm ``p``) for each ``pA_lower >= 1/2``."""
        raise NotImplementedError


@dataclass(frozen=True)
class GaussianNoise(Noise):
    """``N(0, sigma^2 I)``, certifying l_2 radius ``sigma * PhiInv(pA_lower)`` (Cohen et al. 2019, Theorem 1)."""

    name = "gaussian"
    p = 2.0

    def sample_(self, out, *, generator):
        return out.normal_(generator=generator).mul_(self.scale)

    def radius(self, pA_lower):
        return self.scale * normal.ppf(np.asarray(pA_lower, dtype=np.float64))


@dataclass(frozen=True)
class UniformNoise(Noise):
    """``U[-lambda, lambda]^d`` (``scale = lambda``), certifying l_1 radius ``2 lambda (pA_lower - 1/2)``.

    Why: the total variation between the noise and its shift by ``delta`` is ``1 - prod_i (1 - |delta_i| / (2
    lambda)) <= |delta|_1 / (2 lambda)``, and the smoothed class survives while it stays below ``pA - 1/2``
    (Yang et al. 2020, Table 1).
    """

    name = "uniform"
    p = 1.0

    def sample_(self, out, *, generator):
        return out.uniform_(generator=generator).mul_(2 * self.scale).sub_(self.scale)

    def radius(self, pA_lower):
        return 2 * self.scale * (np.asarray(pA_lower, dtype=np.float64) - 0.5)


@dataclass(frozen=True)
class LaplaceNoise(Noise):
    """i.i.d. ``Laplace(0, lambda)`` per coordinate (``scale = lambda``), certifying l_1 radius
    ``-lambda log(2 (1 - pA_lower))`` (Teng et al. 2020, Theorem 1 with ``pB = 1 - pA``; see the module docstring).

    Sampled as ``lambda (E1 - E2)`` with ``E = -log(1 - U)`` standard exponentials (finite for ``U`` in [0, 1)).
    """

    name = "laplace"
    p = 1.0

    def sample_(self, out, *, generator):
        u = torch.rand((2, *out.shape), generator=generator, device=out.device, dtype=out.dtype)
        e = torch.log1p(-u).neg_()
        return torch.sub(e[0], e[1], out=out).mul_(self.scale)

    def radius(self, pA_lower):
        with np.errstate(divide="ignore"):
            return -self.scale * np.log(2 * (1 - np.asarray(pA_lower, dtype=np.float64)))


NOISES: dict[str, type[Noise]] = {c.name: c for c in (GaussianNoise, UniformNoise, LaplaceNoise)}


def make_noise(noise: str | Noise, scale: float) -> Noise:
    """A noise from its name and scale (``sigma`` for Gaussian, ``lambda`` for uniform and Laplace), or ``noise``
    itself.

    Raises:
        ValueError: an unknown name (the valid ones are listed) or a scale that is not a positive finite float.
    """
    if isinstance(noise, Noise):
        return noise
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {sorted(NOISES)}")
    return NOISES[noise](scale)
