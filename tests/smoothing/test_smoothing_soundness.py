"""RS-05, RS-06, RS-07: the empirical failure rate of CERTIFY and PREDICT stays at or below alpha, and broken
variants are caught by the same harness.

Harness. FX-SMOOTH (``conftest.Halfspace``, d = 10) with sigma = 0.5 and points at distances ``t = sigma *
PhiInv(pA)`` from the hyperplane, so that ``P(f(x + e) = g(x)) = pA`` and the true l_2 radius is ``t``. Each of the
``T`` trials is one row of the input batch (``x`` repeated ``T`` times), so one call of the library's own
``certify`` runs ``T`` independent CERTIFYs. A failure is a returned class other than ``g(x)`` (abstaining is not a
failure) or a radius larger than ``t + 1e-9``; at the tie point ``pA = 1/2`` ``g`` is undefined and only a radius
``> 0`` counts.

Statistics. ``F ~ Binom(T, q)`` with ``q <= alpha`` if CERTIFY is sound. The check is the one-sided exact binomial
test of ``q <= alpha``: pass while ``binomtest(F, T, alpha, alternative="greater").pvalue > 1e-3``, per point and
pooled over points. Since CP is conservative (``q`` is well below alpha except near the tie), a sound
implementation fails this check with probability below 1e-3 per point. Power: with ``alpha = 0.1`` and
``T = 2000`` the standard error of ``F / T`` at ``q = 0.1`` is 0.0067, so a true rate of 0.125 (3.7 standard
errors) is detected with probability about 0.6 and 0.14 or more almost surely (z >= 6); the negative controls
below have rates of 0.115 to 0.5 and use ``T`` large enough for z >= 5 (each documented at its test). Seeds are
fixed, so the outcome is deterministic; the bounds above say it is not luck.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm

from trustlab.smoothing import (ABSTAIN, GaussianNoise, SmoothedClassifier, certify_from_counts,
                                clopper_pearson_lower, sample_counts)
from trustlab.smoothing.core import Certification

SIGMA, ALPHA, N0, N = 0.5, 0.1, 20, 200
PA_POINTS = (0.5, 0.55, 0.6, 0.75, 0.9, 0.99)
P_REJECT = 1e-3

Certify = Callable[[torch.Tensor, torch.Generator], tuple[np.ndarray, np.ndarray]]


def _failures(halfspace, certify: Certify, pA: float, trials: int, seed: int) -> int:
    t = SIGMA * norm.ppf(pA)
    x = halfspace.point_at(t)[None].repeat(trials, 1)  # (T, d): one CERTIFY per row
    prediction, radius = certify(x, torch.Generator().manual_seed(seed))
    if pA == 0.5:
        return int((radius > 0).sum())
    wrong = (prediction != ABSTAIN) & (prediction != 0)
    return int((wrong | (radius > t + 1e-9)).sum())


def _pvalue(failures: int, trials: int, alpha: float = ALPHA) -> float:
    return binomtest(failures, trials, alpha, alternative="greater").pvalue


def _library(halfspace, n0: int = N0, n: int = N, alpha: float = ALPHA) -> Certify:
    smoothed = SmoothedClassifier(halfspace, 2, SIGMA)

    def run(x, generator):
        c = smoothed.certify(x, n0, n, alpha, generator=generator, batch_size=20_000)
        return c.prediction, c.radius

    return run


def _broken(halfspace, decide: Callable[[np.ndarray, np.ndarray], Certification], n0: int, n: int,
            reuse: bool = False) -> Certify:
    def run(x, generator):
        kw = dict(num_classes=2, generator=generator, batch_size=20_000)
        c0 = sample_counts(halfspace, x, n0, GaussianNoise(SIGMA), **kw)
        c = c0 if reuse else sample_counts(halfspace, x, n, GaussianNoise(SIGMA), **kw)
        out = decide(c0, c)
        return out.prediction, out.radius

    return run


def test_rs05_certify_failure_rate_at_most_alpha(halfspace):
    trials, total = 2000, 0
    for i, pA in enumerate(PA_POINTS):
        f = _failures(halfspace, _library(halfspace), pA, trials, seed=100 + i)
        total += f
        assert _pvalue(f, trials) > P_REJECT, f"pA={pA}: {f}/{trials} failures exceed alpha={ALPHA}"
    assert _pvalue(total, trials * len(PA_POINTS)) > P_REJECT


@pytest.mark.slow
def test_rs05_certify_failure_rate_at_most_alpha_001(halfspace):
    for i, pA in enumerate(PA_POINTS):
        f = _failures(halfspace, _library(halfspace, alpha=0.01), pA, 5000, seed=200 + i)
        assert _pvalue(f, 5000, 0.01) > P_REJECT, f"pA={pA}: {f}/5000 failures exceed alpha=0.01"


def test_rs06a_reusing_selection_samples_is_caught_at_the_tie(halfspace):
    """n0 = n = 20 at pA = 1/2: the sound rate is P(Binom(20, 1/2) >= 14) = 0.058; reusing the selection
    counts makes it 2 * 0.058 = 0.115. T = 20000 puts that 7 standard errors above alpha = 0.1."""
    def decide(c0, c):
        return certify_from_counts(c0, c, ALPHA, GaussianNoise(SIGMA))

    sound = _failures(halfspace, _broken(halfspace, decide, 20, 20), 0.5, 20_000, seed=1)
    reused = _failures(halfspace, _broken(halfspace, decide, 20, 20, reuse=True), 0.5, 20_000, seed=1)
    assert _pvalue(sound, 20_000) > P_REJECT
    assert _pvalue(reused, 20_000) < P_REJECT, f"reuse not detected: {reused}/20000"


def _point_estimate(c0, c):
    cA = c0.argmax(1)
    pA = np.take_along_axis(c, cA[:, None], 1)[:, 0] / c.sum(1)
    return _decide_with(cA, pA, c0, c)


def _wald(c0, c):
    cA = c0.argmax(1)
    n = c.sum(1)
    phat = np.take_along_axis(c, cA[:, None], 1)[:, 0] / n
    return _decide_with(cA, phat - norm.ppf(1 - ALPHA) * np.sqrt(phat * (1 - phat) / n), c0, c)


def _decide_with(cA, pA_lower, c0, c) -> Certification:
    abstain = pA_lower < 0.5
    radius = np.where(abstain, 0.0, SIGMA * norm.ppf(np.clip(pA_lower, 0.5, 1.0)))
    return Certification(np.where(abstain, ABSTAIN, cA), pA_lower, radius, c0, c, 2.0)


def test_rs06b_point_estimate_is_caught(halfspace):
    """nA / n instead of the lower bound: at pA = 1/2 and 0.55 about half the trials overshoot the radius."""
    for i, pA in enumerate((0.5, 0.55)):
        f = _failures(halfspace, _broken(halfspace, _point_estimate, N0, N), pA, 2000, seed=300 + i)
        assert _pvalue(f, 2000) < P_REJECT, f"point estimate not detected at pA={pA}: {f}/2000"


def test_rs06c_wald_bound_is_caught(halfspace):
    """The normal-approximation bound is close to nominal near pA = 1/2 but fails near 1: at pA = 0.99 and
    n = 200, nA = n (probability 0.99^200 = 0.134) gives a zero standard error, a bound of 1 and an infinite
    radius. T = 10000 puts 0.134 about 11 standard errors above alpha = 0.1."""
    f = _failures(halfspace, _broken(halfspace, _wald, N0, N), 0.99, 10_000, seed=400)
    assert _pvalue(f, 10_000) < P_REJECT, f"Wald not detected: {f}/10000"
    sound = _failures(halfspace, _library(halfspace), 0.99, 10_000, seed=400)
    assert _pvalue(sound, 10_000) > P_REJECT


@pytest.mark.parametrize("pA", [0.5, 0.52, 0.6])
def test_rs07_predict_error_rate_at_most_alpha(halfspace, pA):
    """A failure is a non-abstaining prediction other than g(x) (at the tie, any non-abstaining prediction)."""
    trials, t = 2000, SIGMA * norm.ppf(pA)
    x = halfspace.point_at(t)[None].repeat(trials, 1)
    out = SmoothedClassifier(halfspace, 2, SIGMA).predict(x, 100, ALPHA, generator=torch.Generator().manual_seed(9),
                                                          batch_size=20_000)
    answered = out.prediction != ABSTAIN
    failures = int((answered if pA == 0.5 else answered & (out.prediction != 0)).sum())
    assert _pvalue(failures, trials) > P_REJECT, f"{failures}/{trials} wrong predictions at pA={pA}"
    # abstention is by the two-sided binomial test: pvalue > alpha exactly
    assert np.array_equal(out.prediction == ABSTAIN, out.pvalue > ALPHA)


def test_rs05_lower_bound_sanity_at_the_tie():
    """At pA = 1/2 with n = 200 a radius > 0 needs nA with lower(nA) > 1/2: its exact probability is <= alpha."""
    k = np.arange(201)
    from scipy.stats import binom
    assert binom.pmf(k, 200, 0.5)[clopper_pearson_lower(k, 200, ALPHA) > 0.5].sum() <= ALPHA
