"""RS-03, RS-04, RS-08, RS-09 and the constant classifier's closed-form radius; argument validation.

Reference: reliability-tests.md Sec. 6.2; Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918 (CERTIFY).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from trustlab.smoothing import (ABSTAIN, GaussianNoise, SmoothedClassifier, certify_from_counts,
                                clopper_pearson_lower)
from trustlab.seeding import derive_seed
from trustlab.smoothing import core
from trustlab.smoothing.noises import make_noise


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _counts(nA: int, n: int) -> np.ndarray:
    return np.array([[nA, n - nA]])


def test_rs03_radius_is_sigma_phiinv_of_the_lower_bound_and_abstains_below_half():
    n, alpha, sigma = 1000, 0.001, 0.25
    for nA in range(0, n + 1, 10):
        c = certify_from_counts(np.array([[1, 0]]), _counts(nA, n), alpha, GaussianNoise(sigma))
        lower = float(clopper_pearson_lower(nA, n, alpha))
        assert c.pA_lower[0] == lower
        if lower < 0.5:
            assert c.prediction[0] == ABSTAIN and c.radius[0] == 0.0
        else:
            assert c.prediction[0] == 0
            assert abs(c.radius[0] - sigma * norm.ppf(lower)) <= 1e-12
            two_class = sigma / 2 * (norm.ppf(lower) - norm.ppf(1 - lower))
            assert abs(c.radius[0] - two_class) <= 1e-12


def test_rs03_radius_nondecreasing_in_nA_and_linear_in_sigma():
    n, alpha = 500, 0.01
    counts = np.array([[nA, n - nA] for nA in range(n + 1)])
    sel = np.tile([[1, 0]], (n + 1, 1))
    r1 = certify_from_counts(sel, counts, alpha, GaussianNoise(0.25)).radius
    r2 = certify_from_counts(sel, counts, alpha, GaussianNoise(0.5)).radius
    assert (np.diff(r1) >= 0).all()
    np.testing.assert_allclose(r2, 2 * r1, rtol=1e-12, atol=0)


def test_rs03_at_exactly_half_the_class_is_returned_with_radius_zero(monkeypatch):
    monkeypatch.setattr(core, "clopper_pearson_lower", lambda k, n, alpha: np.full(np.shape(k), 0.5))
    c = certify_from_counts(np.array([[0, 3]]), _counts(10, 20), 0.01, GaussianNoise(1.0))
    assert c.prediction[0] == 1 and c.radius[0] == 0.0


def test_constant_classifier_radius_is_sigma_phiinv_alpha_to_one_over_n(spy_factory):
    sigma, n, alpha = 0.5, 2000, 0.001
    smoothed = SmoothedClassifier(spy_factory(3, lambda r: 2), 3, sigma)
    c = smoothed.certify(torch.zeros(4, 1, 5, 5), 10, n, alpha, generator=_gen(), batch_size=512)
    assert (c.prediction == 2).all()
    np.testing.assert_allclose(c.radius, sigma * norm.ppf(alpha ** (1 / n)), rtol=0, atol=1e-12)


def test_rs04_selection_and_estimation_are_separate_draws(spy_factory):
    """The selection phase sees class 1 only; estimation sees class 1 five times in n. CERTIFY must estimate
    the selected class 1 (nA = 5, abstain), not the estimation argmax 0, and never count selection samples."""
    n0, n, alpha, N = 30, 200, 0.01, 3

    def answer(row: int) -> int:
        if row < N * n0:
            return 1  # selection: every noisy copy of every input
        return 1 if (row - N * n0) % n < 5 else 0

    spy = spy_factory(2, answer)
    x = torch.rand(N, 1, 4, 4, generator=_gen(1))
    c = SmoothedClassifier(spy, 2, 0.25).certify(x, n0, n, alpha, generator=_gen(), batch_size=64)
    assert spy.rows == N * (n0 + n)
    assert (c.counts_selection == [0, n0]).all() and (c.counts_estimation == [n - 5, 5]).all()
    assert (c.pA_lower == clopper_pearson_lower(5, n, alpha)).all()
    assert (c.prediction == ABSTAIN).all()
    rows = torch.cat(spy.batches)
    owner = torch.arange(N).repeat_interleave(n0)
    noise_sel = rows[: N * n0] - x[owner]
    noise_est = rows[N * n0:] - x[torch.arange(N).repeat_interleave(n)]
    # the two phases' noise: disjoint draws, no row of one reappears in the other
    assert not torch.isclose(noise_sel.flatten(1)[:, None], noise_est.flatten(1)[None]).all(-1).any()


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_rs04_sample_loop_covers_exactly_num_samples(batch_size, spy_factory):
    spy = spy_factory(3, lambda r: r % 3)
    c = SmoothedClassifier(spy, 3, 0.1).certify(torch.zeros(2, 3), 5, 23, 0.1, generator=_gen(), batch_size=batch_size)
    assert spy.rows == 2 * (5 + 23)
    assert (c.counts_selection.sum(1) == 5).all() and (c.counts_estimation.sum(1) == 23).all()
    assert all(len(b) <= batch_size for b in spy.batches)


def test_rs09_same_seed_same_counts_and_batch_size_does_not_change_them(halfspace):
    x = torch.stack([halfspace.point_at(d) for d in (0.0, 0.1, 0.4, -0.3)])
    smoothed = SmoothedClassifier(halfspace, 2, 0.5)
    runs = [smoothed.certify(x, 50, 700, 0.01, generator=_gen(7), batch_size=b) for b in (1000, 1000, 333, 64, 1)]
    for other in runs[1:]:
        assert np.array_equal(other.counts_selection, runs[0].counts_selection)
        assert np.array_equal(other.counts_estimation, runs[0].counts_estimation)
        assert np.array_equal(other.radius, runs[0].radius)
    different = smoothed.certify(x, 50, 700, 0.01, generator=_gen(8))
    assert not np.array_equal(different.counts_estimation, runs[0].counts_estimation)
    pred = [smoothed.predict(x, 300, 0.01, generator=_gen(3), batch_size=b).counts for b in (1000, 17)]
    assert np.array_equal(pred[0], pred[1])


def _reference_rows(x: torch.Tensor, num: int, noise, seed: int) -> torch.Tensor:
    """The noisy rows of one sampling phase from the module docstring's definition: root = one draw from the
    caller's generator, block ``b`` = ``noise.sample`` of ``NOISE_BLOCK`` rows from a generator seeded by
    ``derive_seed(root, b)``, row ``r`` = ``x[r // num]`` + noise row ``r``."""
    root = int(torch.randint(0, 2**62, (1,), generator=_gen(seed)))
    total = len(x) * num
    blocks = [noise.sample((core.NOISE_BLOCK, *x.shape[1:]), generator=_gen(derive_seed(root, b)),
                           device=x.device, dtype=x.dtype) for b in range(-(-total // core.NOISE_BLOCK))]
    return x.repeat_interleave(num, 0) + torch.cat(blocks)[:total]


@pytest.mark.parametrize("name", ["gaussian", "uniform", "laplace"])
def test_rs09_every_noisy_row_is_the_seeded_stream_bit_for_bit(name, spy_factory):
    """The sampling loop draws blocks in place and adds x by broadcasting; whatever the batch size (cutting the
    512-row blocks and the inputs anywhere), the rows the base classifier sees are exactly the definition's."""
    noise = make_noise(name, 0.3)
    for dtype, num in [(torch.float32, 700), (torch.float64, 3)]:
        x = torch.rand(3, 1, 6, 6, generator=_gen(1), dtype=dtype)
        expected = _reference_rows(x, num, noise, seed=4)
        for batch_size in (1, 5, 333, 512, 1000, 5000):
            spy = spy_factory(2, lambda r: 0)
            counts = core.sample_counts(spy, x, num, noise, num_classes=2, generator=_gen(4), batch_size=batch_size)
            assert torch.equal(torch.cat(spy.batches), expected), (name, dtype, batch_size)
            assert (counts[:, 0] == num).all()


def test_rs09_global_rng_is_untouched(halfspace):
    state = torch.get_rng_state()
    SmoothedClassifier(halfspace, 2, 0.5).certify(halfspace.point_at(0.2)[None], 10, 100, 0.1, generator=_gen())
    assert torch.equal(state, torch.get_rng_state())


class _Normalized(nn.Module):
    """A linear model behind an internal Normalize, as trustlab models hold their preprocessing."""

    def __init__(self, inner: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.inner, self.mean, self.std = inner, mean, std

    def forward(self, x):
        return self.inner((x - self.mean) / self.std)


def test_rs08_noise_is_added_in_pixel_space(halfspace):
    """Smoothing ``Normalize -> f`` at sigma on pixels equals smoothing ``f`` at sigma/std on normalized inputs
    (same draws), and the pixel radius is std times the normalized one: the noise is added before Normalize."""
    mean, std, sigma = 0.1307, 0.3081, 0.25
    pixels = torch.stack([halfspace.point_at(d) for d in (0.05, 0.2, -0.1)]) * std + mean
    a = SmoothedClassifier(_Normalized(halfspace, mean, std), 2, sigma).certify(pixels, 20, 500, 0.01,
                                                                                generator=_gen(5))
    b = SmoothedClassifier(halfspace, 2, sigma / std).certify((pixels - mean) / std, 20, 500, 0.01,
                                                             generator=_gen(5))
    assert np.array_equal(a.counts_estimation, b.counts_estimation)
    np.testing.assert_allclose(a.radius, std * b.radius, rtol=1e-12)


def test_model_modes_are_restored_and_inputs_not_mutated(halfspace):
    x = halfspace.point_at(0.3)[None].clone()
    before = x.clone()
    halfspace.train()
    SmoothedClassifier(halfspace, 2, 0.5).predict(x, 50, 0.1, generator=_gen())
    assert halfspace.training and torch.equal(x, before)


@pytest.mark.parametrize("call, match", [
    (lambda s, x: s.certify(x, 0, 10, 0.1, generator=_gen()), "n0"),
    (lambda s, x: s.certify(x, 10, 0, 0.1, generator=_gen()), "n "),
    (lambda s, x: s.certify(x, 10, 10, 1.5, generator=_gen()), "alpha"),
    (lambda s, x: s.predict(x, 10, 0.0, generator=_gen()), "alpha"),
    (lambda s, x: s.predict(x, 10, 0.1, generator=None), "generator"),
    (lambda s, x: s.predict(x, 10, 0.1, generator=_gen(), batch_size=0), "batch_size"),
    (lambda s, x: s.predict(x[0], 10, 0.1, generator=_gen()), "x must be"),
    (lambda s, x: s.predict(x * float("nan"), 10, 0.1, generator=_gen()), "finite"),
    (lambda s, x: s.predict(x.long(), 10, 0.1, generator=_gen()), "floating"),
])
def test_invalid_arguments_raise_value_errors_naming_them(halfspace, call, match):
    s = SmoothedClassifier(halfspace, 2, 0.5)
    with pytest.raises((ValueError, TypeError), match=match):
        call(s, torch.zeros(2, 10))


@pytest.mark.parametrize("kwargs, match", [({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"),
                                           ({"num_classes": 1}, "num_classes"), ({"noise": "cauchy"}, "noise")])
def test_invalid_construction(halfspace, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmoothedClassifier(**{"base": halfspace, "num_classes": 2, "sigma": 0.5, **kwargs})


def test_wrong_logit_shape_is_named(halfspace):
    with pytest.raises(ValueError, match=r"\(B?.*3\) logits"):
        SmoothedClassifier(halfspace, 3, 0.5).predict(torch.zeros(1, 10), 5, 0.1, generator=_gen())
