"""RS-01 and RS-02: the one-sided Clopper-Pearson lower bound is the Beta quantile, and its coverage is exact.

Reference: reliability-tests.md Sec. 6.2 (RS-01, RS-02).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta, binom

from trustlab.smoothing import clopper_pearson_lower


def _ks(n: int) -> list[int]:
    return sorted({0, 1, n // 2, n - 1, n} & set(range(n + 1)))


@pytest.mark.parametrize("n", [1, 10, 100, 10_000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.1])
def test_rs01_clopper_pearson_matches_scipy_beta_quantile(n, alpha):
    for k in _ks(n):
        lower = float(clopper_pearson_lower(k, n, alpha))
        if k == 0:
            assert lower == 0.0
            continue
        assert abs(lower - beta.ppf(alpha, k, n - k + 1)) <= 1e-12
        # independent of the Beta identity: the bound is the p at which P(Binom(n, p) >= k) = alpha
        assert binom.sf(k - 1, n, lower) == pytest.approx(alpha, rel=1e-6)
        if k == n:
            assert abs(lower - alpha ** (1 / n)) <= 1e-12


def test_rs01_vectorised_equals_scalar_and_statsmodels_when_installed():
    k = np.array([0, 3, 7, 10])
    assert np.array_equal(clopper_pearson_lower(k, 10, 0.01), [clopper_pearson_lower(int(i), 10, 0.01) for i in k])
    statsmodels = pytest.importorskip("statsmodels.stats.proportion")
    for i in k:
        ref = statsmodels.proportion_confint(int(i), 10, alpha=0.02, method="beta")[0]
        assert abs(float(clopper_pearson_lower(int(i), 10, 0.01)) - ref) <= 1e-12


@pytest.mark.parametrize("bad", [{"k": -1}, {"k": 11}, {"k": 2.5}, {"n": 0}, {"alpha": 0.0}, {"alpha": 1.0},
                                 {"alpha": True}])
def test_rs01_invalid_arguments_name_the_value(bad):
    args = {"k": 3, "n": 10, "alpha": 0.05, **bad}
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        clopper_pearson_lower(args["k"], args["n"], args["alpha"])


@pytest.mark.parametrize("n", [10, 50, 200, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_rs02_exact_coverage_by_binomial_summation(n, alpha):
    """cover(p) = sum_k Binom(k; n, p) 1[lower(k) <= p] >= 1 - alpha at 199 values of p: no sampling."""
    p = np.arange(1, 200) / 200
    lower = clopper_pearson_lower(np.arange(n + 1), n, alpha)  # (n + 1,)
    pmf = binom.pmf(np.arange(n + 1)[None, :], n, p[:, None])  # (199, n + 1)
    cover = (pmf * (lower[None, :] <= p[:, None])).sum(1)
    assert cover.min() >= 1 - alpha - 1e-12, f"worst coverage {cover.min()} at p={p[cover.argmin()]}"
    # and the bound is not trivially loose: somewhere coverage is within a few alpha of nominal
    assert cover.min() <= 1 - alpha / 20
