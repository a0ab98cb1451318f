"""The statistics of randomized smoothing: the one-sided Clopper-Pearson bound and PREDICT's binomial test.

Both are exact (no normal approximation): the lower bound is a Beta quantile and the test sums the binomial
distribution, as in Cohen et al.'s reference code, through SciPy.

Reference:
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the binomial",
    Biometrika 1934. Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
    ICML 2019, arXiv:1902.02918 (Sec. 3.2, the PREDICT and CERTIFY boxes).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest

__all__ = ["check_alpha", "clopper_pearson_lower", "predict_pvalue"]


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float in ``(0, 1)``.

    Raises:
        ValueError: anything else (the message names the value).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
    return float(alpha)


def clopper_pearson_lower(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """The one-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    ``lower(k) = Beta(alpha; k, n - k + 1)``, the alpha-quantile of that Beta distribution, for ``k >= 1`` and 0
    for ``k = 0``; equivalently the ``p`` at which ``P(Binom(n, p) >= k) = alpha``. It equals
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]`` (the two-sided interval at level
    ``1 - 2 alpha``), which is what Cohen et al.'s code calls.

    Args:
        k: successes, integers in ``[0, n]`` (any shape).
        n: trials, ``>= 1``.
        alpha: the failure probability, in ``(0, 1)``.

    Returns:
        The bounds, float64, shaped like ``k``.

    Raises:
        ValueError: ``n < 1``, ``k`` outside ``[0, n]`` or not integral, or ``alpha`` outside ``(0, 1)``.

    Guarantee:
        For every true ``p``, ``P_{k ~ Binom(n, p)}(lower(k) <= p) >= 1 - alpha``.
    """
    alpha = check_alpha(alpha)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    k = np.asarray(k)
    if k.dtype.kind not in "iu" or (k.size and (k.min() < 0 or k.max() > n)):
        raise ValueError(f"k must be integers in [0, n={n}], got {k if k.size <= 8 else k.dtype}")
    k = k.astype(np.float64)
    with np.errstate(invalid="ignore"):
        lower = beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, lower)


def predict_pvalue(c1: int, c2: int) -> float:
    """PREDICT's two-sided binomial test p-value of ``c1`` successes in ``c1 + c2`` trials at ``p = 1/2``
    (``scipy.stats.binomtest``; 1 when ``c1 + c2 = 0``)."""
    if c1 + c2 == 0:
        return 1.0
    return float(binomtest(int(c1), int(c1 + c2), 0.5).pvalue)
