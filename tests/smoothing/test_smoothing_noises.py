"""Uniform and Laplace smoothing (l_1 radii), their samplers, and the l_inf view of an l_2 radius.

The radii are checked against the exact one-dimensional worst case (a half-line base classifier, whose smoothed
probability moves to exactly 1/2 at the certified shift), and CERTIFY with each noise against a coordinate-aligned
halfspace whose true l_1 radius is its distance to the hyperplane, with the failure-rate harness of RS-05.

Reference: Yang et al., ICML 2020, arXiv:2002.08118 (Table 1); Teng, Lee & Yuan 2020 (Theorem 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, laplace, uniform

from trustlab.smoothing import (ABSTAIN, GaussianNoise, LaplaceNoise, SmoothedClassifier, UniformNoise,
                                linf_radius_from_l2, make_noise, plot_linf_shrinkage)

P = np.array([0.5, 0.55, 0.6, 0.75, 0.9, 0.99, 0.999])


def test_uniform_radius_is_2_lambda_times_pA_minus_half_and_the_exact_1d_worst_case():
    lam = 0.7
    r = UniformNoise(lam).radius(P)
    np.testing.assert_allclose(r, 2 * lam * (P - 0.5), rtol=0, atol=1e-15)
    # f(e) = 1[e <= t] with P(U[-lam, lam] <= t) = pA; shifting by the radius brings P to exactly 1/2
    t = uniform.ppf(P, loc=-lam, scale=2 * lam)
    np.testing.assert_allclose(uniform.cdf(t - r, loc=-lam, scale=2 * lam), 0.5, atol=1e-12)


def test_laplace_radius_is_minus_lambda_log_2_one_minus_pA_and_the_exact_1d_worst_case():
    lam = 0.4
    r = LaplaceNoise(lam).radius(P)
    np.testing.assert_allclose(r, -lam * np.log(2 * (1 - P)), rtol=1e-12, atol=1e-15)
    t = laplace.ppf(P, scale=lam)
    np.testing.assert_allclose(laplace.cdf(t - r, scale=lam), 0.5, atol=1e-12)
    # never below Teng et al.'s other term lambda/2 log(pA/pB) ...
    assert (r >= lam / 2 * np.log(P / (1 - P)) - 1e-15).all()
    # ... and lambda log(pA/(1-pA)) overshoots the exact worst case: not a valid radius
    wrong = lam * np.log(P[1:] / (1 - P[1:]))
    assert (laplace.cdf(t[1:] - wrong, scale=lam) < 0.5).all()


@pytest.mark.parametrize("noise, fresh", [
    (GaussianNoise(0.3), lambda shape, g: torch.randn(shape, generator=g) * 0.3),
    (UniformNoise(0.3), lambda shape, g: torch.rand(shape, generator=g) * 0.6 - 0.3),
    (LaplaceNoise(0.3), None),
])
def test_sample_in_place_into_a_view_equals_a_fresh_draw(noise, fresh):
    """``sample_`` into a slice of a larger buffer gives the bits of ``sample`` (and, for Gaussian and uniform,
    of the textbook ``randn * sigma`` and ``rand * 2 lambda - lambda``): CERTIFY's in-place loop changes no
    record."""
    shape = (512, 1, 6, 6)
    drawn = noise.sample(shape, generator=torch.Generator().manual_seed(3), device=torch.device("cpu"),
                         dtype=torch.float32)
    buffer = torch.full((700, 1, 6, 6), float("nan"))
    noise.sample_(buffer[100:612], generator=torch.Generator().manual_seed(3))
    assert torch.equal(buffer[100:612], drawn)
    assert buffer[:100].isnan().all() and buffer[612:].isnan().all()
    if fresh is not None:
        assert torch.equal(drawn, fresh(shape, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("noise, var", [(UniformNoise(0.5), 0.5**2 / 3), (LaplaceNoise(0.5), 2 * 0.5**2)])
def test_samplers_have_the_right_law(noise, var):
    e = noise.sample((200_000,), generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                     dtype=torch.float64).numpy()
    assert abs(e.mean()) < 5 * math.sqrt(var / len(e))
    assert e.var() == pytest.approx(var, rel=0.02)
    if isinstance(noise, UniformNoise):
        assert e.min() >= -0.5 and e.max() <= 0.5
    else:
        assert np.abs(e).mean() == pytest.approx(0.5, rel=0.02)  # E|Laplace(0, lam)| = lam


@pytest.mark.parametrize("name, lam", [("uniform", 0.6), ("laplace", 0.3)])
def test_l1_certify_failure_rate_at_most_alpha(axis_halfspace, name, lam):
    """f(x) = class 0 iff 2 x_3 - 0.2 > 0: under i.i.d. noise symmetric per coordinate, g = f, pA is the
    1-D law's cdf at the distance, and the true l_1 radius is the distance |x_3 - 0.1|."""
    alpha, trials = 0.1, 1500
    dist = {"uniform": uniform(loc=-lam, scale=2 * lam), "laplace": laplace(scale=lam)}[name]
    smoothed = SmoothedClassifier(axis_halfspace, 2, lam, noise=name)
    assert smoothed.noise.p == 1.0
    for i, pA in enumerate((0.55, 0.75, 0.95)):
        t = float(dist.ppf(pA))
        x = axis_halfspace.point_at(t)[None].repeat(trials, 1)
        c = smoothed.certify(x, 20, 200, alpha, generator=torch.Generator().manual_seed(i), batch_size=20_000)
        fail = int((((c.prediction != ABSTAIN) & (c.prediction != 0)) | (c.radius > t + 1e-9)).sum())
        assert binomtest(fail, trials, alpha, alternative="greater").pvalue > 1e-3, f"{name} pA={pA}: {fail}"
        assert (c.radius[c.prediction == 0] > 0).any()


def test_make_noise_names_and_errors():
    assert make_noise("laplace", 0.2) == LaplaceNoise(0.2)
    with pytest.raises(ValueError, match="cauchy"):
        make_noise("cauchy", 0.2)
    with pytest.raises(ValueError, match="sigma"):
        make_noise("uniform", float("inf"))


def test_linf_radius_from_l2_is_radius_over_sqrt_d():
    assert linf_radius_from_l2(1.0, 784) == pytest.approx(1 / 28)
    np.testing.assert_allclose(linf_radius_from_l2(np.array([0.5, 2.0]), 3072), np.array([0.5, 2.0]) / math.sqrt(3072))
    # the l_inf ball of that radius lies inside the l_2 ball: its corner has l_2 norm exactly the l_2 radius
    d, r = 150528, 0.75
    assert math.sqrt(d) * linf_radius_from_l2(r, d) == pytest.approx(r, rel=1e-12)
    for bad, match in [((1.0, 0), "d must"), ((-0.1, 10), "radius"), ((float("nan"), 10), "radius")]:
        with pytest.raises(ValueError, match=match):
            linf_radius_from_l2(*bad)


def test_plot_linf_shrinkage_writes_a_png(tmp_path):
    png = plot_linf_shrinkage(path=tmp_path / "linf.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "linf.png").read_bytes() == png
