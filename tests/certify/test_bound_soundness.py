"""Soundness of every bound method (CERT-01), monotonicity in eps (CERT-06), the input box (CERT-07) and batch
independence (CERT-10), for the l_inf and l_2 balls.

Random ReLU MLPs and CNNs (weights N(0, 1), widths <= 16, random and briefly trained) come from seeded
generators over many seeds instead of hypothesis, so that the suite has no extra dependency and every case is
reproducible by its seed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import (
    AlphaCROWN,
    alpha_crown_bounds,
    crown_bounds,
    crown_ibp_bounds,
    ibp_bounds,
    margin_spec,
    to_network,
)
from trustlab.models import build_model

METHODS = {
    "ibp": ibp_bounds,
    "crown-ibp": crown_ibp_bounds,
    "crown": crown_bounds,
    "alpha-crown": lambda net, x, threat, spec=None: alpha_crown_bounds(net, x, threat, spec=spec, steps=3),
}
EPS = {math.inf: (0.0, 1e-3, 0.05, 0.3), 2.0: (0.0, 1e-3, 0.05, 0.3)}
SEEDS = range(5)


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cert01_bounds_contain_sampled_corner_and_pgd_points(seed, p, kind, trained, random_net, extremes,
                                                             contains):
    model, x = random_net(kind, seed, trained=trained)
    net = to_network(model, x)
    y = model(x).argmax(1)
    for eps in EPS[p]:
        threat = LpBall(eps, p)
        for spec in (None, margin_spec(y, net.num_classes)):
            seen_lo, seen_hi = extremes(model, x, threat, spec, seed=seed)
            for name, bound in METHODS.items():
                b = bound(net, x, threat, spec=spec)
                contains(b.lower, b.upper, seen_lo, seen_hi)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert01_many_seeds_with_10k_samples(p, kind, random_net, extremes, contains):
    """CERT-01 at its full size: 10,000 uniform points per example, on 40 more random and trained nets."""
    for seed in range(100, 140):
        model, x = random_net(kind, seed, trained=seed % 2 == 1)
        net = to_network(model, x)
        spec = margin_spec(model(x).argmax(1), net.num_classes)
        for eps in EPS[p]:
            seen_lo, seen_hi = extremes(model, x, LpBall(eps, p), spec, seed=seed, samples=10_000)
            for bound in METHODS.values():
                b = bound(net, x, LpBall(eps, p), spec=spec)
                contains(b.lower, b.upper, seen_lo, seen_hi)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert01_sound_on_trained_digit_models(p, small_model, small_cnn, test_batch, extremes, contains):
    x, y = test_batch[0][:4], test_batch[1][:4]
    eps = 0.02 if p == math.inf else 0.1
    for model in (small_model, small_cnn):
        spec = margin_spec(y, 10)
        seen_lo, seen_hi = extremes(model, x, LpBall(eps, p), spec, samples=500)
        for name, bound in METHODS.items():
            b = bound(model, x, LpBall(eps, p), spec=spec)
            contains(b.lower, b.upper, seen_lo, seen_hi)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert01_sound_on_cnn_small(p, extremes, contains):
    """The registry's cnn-small (MNIST shape, seeded initialisation) at the benchmark's radius."""
    model = build_model("cnn-small", in_shape=(1, 28, 28), num_classes=10, seed=0).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    threat = LpBall(0.1 if p == math.inf else 1.0, p)
    spec = margin_spec(model(x).argmax(1), 10)
    seen_lo, seen_hi = extremes(model, x, threat, spec, samples=200)
    for bound in METHODS.values():
        b = bound(model, x, threat, spec=spec)
        contains(b.lower, b.upper, seen_lo, seen_hi)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert06_ibp_is_monotone_in_eps(p, kind, random_net, record_property):
    """IBP never loosens when eps shrinks; CROWN's violations are only counted (not provably monotone)."""
    crown_violations = 0
    for seed in range(10):
        model, x = random_net(kind, seed)
        net = to_network(model, x)
        spec = margin_spec(model(x).argmax(1), net.num_classes)
        prev_ibp = prev_crown = None
        for eps in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0):
            ibp = ibp_bounds(net, x, LpBall(eps, p), spec=spec)
            crown = crown_bounds(net, x, LpBall(eps, p), spec=spec)
            if prev_ibp is not None:
                assert bool((ibp.lower <= prev_ibp.lower + 1e-5).all())
                assert bool((ibp.upper >= prev_ibp.upper - 1e-5).all())
                crown_violations += int((crown.lower > prev_crown.lower + 1e-5).sum())
            prev_ibp, prev_crown = ibp, crown
    record_property("crown_monotonicity_violations", crown_violations)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert07_box_clipping_is_tighter_and_sound(p, random_net, extremes, contains):
    for seed in range(4):
        model, x = random_net("cnn", seed)
        x = (x > 0.5).to(x.dtype) * 0.98 + 0.01  # pixels near both ends of [0, 1], where the box clips
        net = to_network(model, x)
        spec = margin_spec(model(x).argmax(1), net.num_classes)
        clipped, unclipped = LpBall(0.1, p), LpBall(0.1, p, lower=None, upper=None)
        for name, bound in METHODS.items():
            tight, loose = bound(net, x, clipped, spec=spec), bound(net, x, unclipped, spec=spec)
            contains(tight.lower, tight.upper, *extremes(model, x, clipped, spec, seed=seed, samples=500))
            if name == "ibp":  # inclusion-monotone: a smaller input set never gives a looser bound
                assert bool((tight.lower >= loose.lower - 1e-5).all())
                assert bool((tight.upper <= loose.upper + 1e-5).all())


class _Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert07_threat_is_in_pixel_space_when_the_model_normalises(p, random_net):
    """A model normalising inside its forward has the bounds of the same function with the normalisation folded
    into its first layer: the ball is taken around the raw pixels, not the normalised ones."""
    model, x = random_net("mlp", 3)
    first = model[0]
    mean, std = 0.3, 0.2
    folded = nn.Linear(first.in_features, first.out_features)
    with torch.no_grad():
        folded.weight.copy_(first.weight / std)
        folded.bias.copy_(first.bias - first.weight.sum(1) * mean / std)
    normalising = nn.Sequential(_Normalize(mean, std), *model).eval()
    plain = nn.Sequential(folded, *list(model)[1:]).eval()
    torch.testing.assert_close(normalising(x), plain(x), atol=1e-5, rtol=1e-5)
    spec = margin_spec(plain(x).argmax(1), plain[-1].out_features)
    for name, bound in METHODS.items():
        a, b = bound(normalising, x, LpBall(0.05, p), spec=spec), bound(plain, x, LpBall(0.05, p), spec=spec)
        torch.testing.assert_close(a.lower, b.lower, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.upper, b.upper, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
@pytest.mark.parametrize("name", list(METHODS))
def test_cert10_bounds_do_not_depend_on_the_batch(name, p, random_net):
    """In float64, so that BLAS choosing other kernels for one row than for seven (a float32 rounding difference
    of ~1e-6, not a dependence) cannot hide a real mixing of examples."""
    model, x = random_net("cnn", 1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(7, *x.shape[1:], generator=gen, dtype=torch.float64)
    net = to_network(model, x)
    spec = margin_spec(model(x).argmax(1), net.num_classes)
    threat = LpBall(0.05, p)
    batch = METHODS[name](net, x, threat, spec=spec)
    for i in (0, 3, 6):
        alone = METHODS[name](net, x[i : i + 1], threat, spec=spec[i : i + 1])
        torch.testing.assert_close(alone.lower[0], batch.lower[i], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(alone.upper[0], batch.upper[i], atol=1e-12, rtol=1e-12)


def test_alpha_crown_config_matches_function(random_net):
    model, x = random_net("mlp", 2)
    cfg = AlphaCROWN(steps=3, step_size=0.2)
    a = cfg.bounds(model, x, LpBall(0.1))
    b = alpha_crown_bounds(model, x, LpBall(0.1), steps=3, step_size=0.2)
    torch.testing.assert_close(a.lower, b.lower)
    assert cfg.to_dict() == {"method": "alpha-crown", "steps": 3, "step_size": 0.2}
