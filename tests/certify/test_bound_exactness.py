"""Exactness where it is guaranteed (CERT-02), the orderings theory guarantees (CERT-03), and the measured
ordering of CROWN against IBP on trained networks (not guaranteed, so asserted only as measured here).

These run in float64 so that "exact" can be checked to 1e-9.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import (
    alpha_crown_bounds,
    crown_bounds,
    crown_ibp_bounds,
    ibp_bounds,
    margin_spec,
    to_network,
)

ALL = {"ibp": ibp_bounds, "crown-ibp": crown_ibp_bounds, "crown": crown_bounds,
       "alpha-crown": lambda net, x, threat, spec=None: alpha_crown_bounds(net, x, threat, spec=spec, steps=5)}
F64 = torch.float64


def _dual_norm(w: torch.Tensor, p: float) -> torch.Tensor:
    """``||w_i||_q`` per row with ``1/p + 1/q = 1``: the l_1 norm for l_inf, the l_2 norm for l_2."""
    return w.abs().sum(1) if p == math.inf else w.norm(dim=1)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_cert02a_exact_at_eps_zero(kind, p, random_net):
    for seed in range(5):
        model, x = random_net(kind, seed, dtype=F64)
        spec = margin_spec(model(x).argmax(1), model[-1].out_features, dtype=F64)
        want = torch.einsum("nsk,nk->ns", spec, model(x))
        for name, bound in ALL.items():
            b = bound(model, x, LpBall(0.0, p), spec=spec)
            torch.testing.assert_close(b.lower, want, atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(b.upper, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert02b_single_linear_layer_is_the_closed_form(p):
    """IBP = CROWN-IBP = CROWN = alpha-CROWN = ``W x ± eps ||W_i||_q``, on the logits and on the margins."""
    gen = torch.Generator().manual_seed(3)
    lin = nn.Linear(16, 4).to(F64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 16, generator=gen, dtype=F64))
    lin.eval()
    x = 0.3 + 0.4 * torch.rand(5, 16, generator=gen, dtype=F64)  # the box [0, 1] does not clip at eps = 0.05
    eps = 0.05
    y = lin(x).argmax(1)
    spec = margin_spec(y, 4, dtype=F64)
    for c in (None, spec):
        rows = lin.weight.expand(5, 4, 16) if c is None else c @ lin.weight  # (N, S, d)
        centre = lin(x) if c is None else torch.einsum("nsk,nk->ns", c, lin(x))
        radius = eps * torch.stack([_dual_norm(r, p) for r in rows])
        for name, bound in ALL.items():
            b = bound(lin, x, LpBall(eps, p), spec=c)
            torch.testing.assert_close(b.lower, centre - radius, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(b.upper, centre + radius, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert02c_linear_network_crown_exact_ibp_not_tighter(p):
    gen = torch.Generator().manual_seed(4)
    layers = [nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(5, 3)]
    model = nn.Sequential(nn.Flatten(), *layers).to(F64).eval()
    with torch.no_grad():
        for lin in layers:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=F64))
    w = layers[2].weight @ layers[1].weight @ layers[0].weight  # (3, 8)
    x = 0.3 + 0.4 * torch.rand(4, 8, generator=gen, dtype=F64)
    eps = 0.05
    exact_lo = model(x) - eps * _dual_norm(w, p)
    for name in ("crown", "crown-ibp", "alpha-crown"):
        torch.testing.assert_close(ALL[name](model, x, LpBall(eps, p)).lower, exact_lo, atol=1e-10, rtol=1e-10)
    assert bool((ibp_bounds(model, x, LpBall(eps, p)).lower <= exact_lo + 1e-10).all())


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert03_alpha_crown_never_looser_than_crown(p, random_net):
    """On 100 random nets per norm (200 in all), within 1e-6."""
    for seed in range(100):
        model, x = random_net("mlp" if seed % 2 else "cnn", seed, trained=seed % 4 == 1, dtype=F64)
        net = to_network(model, x)
        spec = margin_spec(model(x).argmax(1), net.num_classes, dtype=F64)
        threat = LpBall(0.05 if p == math.inf else 0.3, p)
        crown = crown_bounds(net, x, threat, spec=spec)
        alpha = alpha_crown_bounds(net, x, threat, spec=spec, steps=3)
        assert bool((alpha.lower >= crown.lower - 1e-6).all())
        assert bool((alpha.upper <= crown.upper + 1e-6).all())


def test_cert03_alpha_crown_improves_on_a_net_with_unstable_neurons(small_model, test_batch):
    """Not only never looser: on a trained MLP at a radius with many unstable ReLUs it is strictly tighter."""
    x, y = test_batch[0][:8], test_batch[1][:8]
    spec = margin_spec(y, 10)
    with torch.no_grad():
        crown = crown_bounds(small_model, x, LpBall(0.05), spec=spec).lower
        alpha = alpha_crown_bounds(small_model, x, LpBall(0.05), spec=spec, steps=20).lower
    assert float((alpha - crown).mean()) > 1e-3


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_crown_tighter_than_ibp_on_trained_nets_as_measured(p, small_model, small_cnn, test_batch, record_property):
    """Measured, not guaranteed (CERT-03 says not to assert it for every net): on the two trained digit models,
    CROWN's margin lower bound is at least IBP's on at least 99% of (example, class) pairs, and higher on
    average."""
    x, y = test_batch[0][:32], test_batch[1][:32]
    eps = 0.02 if p == math.inf else 0.2
    spec = margin_spec(y, 10)
    for label, model in (("mlp", small_model), ("cnn", small_cnn)):
        with torch.no_grad():
            ibp = ibp_bounds(model, x, LpBall(eps, p), spec=spec).lower
            crown = crown_bounds(model, x, LpBall(eps, p), spec=spec).lower
        share = float((crown >= ibp - 1e-6).float().mean())
        record_property(f"crown_at_least_ibp_share_{label}", share)
        assert share >= 0.99
        assert float(crown.mean()) > float(ibp.mean())
