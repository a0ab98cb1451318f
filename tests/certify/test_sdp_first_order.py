"""The first-order dual of the SDP relaxation (SDP-FO, :mod:`trustlab.certify.sdp_fo`): sound for any multipliers
(below the conic solvers' optimum and the exact MILP, CERT-01 on sampled points, also when stopped after one
step), close to the conic optimum after enough steps, its certified eigenvalue, its status (CERT-09) and its errors.

Random nets have one hidden layer (8-20 inputs, 6-16 ReLUs, 3-4 classes, weights N(0, 1), seeded generators), so
that Clarabel solves each SDP exactly in well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import SDP, Verdict, build_method, certify, margin_spec, milp_bounds, sdp_bounds
from trustlab.certify import sdp as sdp_module
from trustlab.certify import sdp_fo
from trustlab.certify.network import prepare
from trustlab.certify.sdp import SDPRelaxation

import test_sdp as sdp_nets
from test_sdp import NEAR_TIE, ROBUST, X_TIE, Y_TIE, hand_net

FO = SDP(solver=sdp_module.FIRST_ORDER, steps=200)
CONIC_TOL = 1e-5  # Clarabel's value is within its tolerances (1e-6) of the optimum, times the scale
TOL_ABS, TOL_REL = 1e-4, 1e-5  # float32 slack of a bound over a sampled value (conftest's CERT-01 TOL_BOUND)
GAP = 0.01  # after the default 1000 steps the bound is within GAP * (1 + |optimum|) of Clarabel's (measured: 0.0012)


def one_hidden(seed: int, *, n: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """A random ``Linear, ReLU, Linear`` with 8-20 inputs and ``n`` inputs in [0, 1]."""
    return sdp_nets.one_hidden(seed, n=n, sizes=((8, 20), (6, 16), (3, 4)), base=5000)


def margins(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y = model(x).argmax(1)
    return y, margin_spec(y, model[2].out_features)


def conic(model, x, threat, spec):
    """Clarabel's SDP bounds (every solve optimal), float64 (N, S)."""
    b = sdp_bounds(model, x, threat, spec=spec, solver="CLARABEL")
    assert bool(torch.isfinite(b.lower).all())
    return b.lower.double(), b.upper.double()


def relaxations(model, x, threat, spec):
    """Each example's relaxation and its rows' costs, as the SDP method builds them."""
    network, _ = prepare(model, x, threat, spec)
    out = []
    for n in range(len(x)):
        rel = SDPRelaxation.build(network, x[n : n + 1], threat, fix_stable=True)
        cost_s, cost_t, const = zip(*map(rel.objective, spec[n].double().numpy()))
        out.append((rel, (np.stack(cost_s), np.stack(cost_t), np.array(const))))
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_cert01_contains_sampled_and_pgd_points_also_after_one_step(seed, p, extremes):
    model, x = one_hidden(seed)
    _, spec = margins(model, x)
    threat = LpBall(0.1 if p == math.inf else 0.5, p=p)
    lo_seen, hi_seen = extremes(model, x, threat, spec, seed=seed, samples=300)
    tol = TOL_ABS + TOL_REL * torch.maximum(lo_seen.abs(), hi_seen.abs())
    for config in (SDP(solver="first-order", steps=1), FO):
        b = config.bounds(model, x, threat, spec=spec)
        assert bool(torch.isfinite(b.lower).all())
        assert bool((b.lower <= lo_seen + tol).all()), (b.lower - lo_seen).max()
        assert bool((b.upper >= hi_seen - tol).all()), (hi_seen - b.upper).max()


@pytest.mark.parametrize("seed", range(3))
def test_at_most_the_conic_optimum_and_the_exact_milp(seed):
    model, x = one_hidden(seed)
    _, spec = margins(model, x)
    threat = LpBall(0.1)
    lower, upper = conic(model, x, threat, spec)
    exact = milp_bounds(model, x, threat, spec=spec).lower.double()
    assert bool((lower <= exact + 1e-4 * (1 + exact.abs())).all())  # the SDP relaxes the MILP
    for steps in (1, 200):
        b = SDP(solver="first-order", steps=steps).bounds(model, x, threat, spec=spec)
        assert bool((b.lower.double() <= lower + CONIC_TOL * (1 + lower.abs())).all()), (b.lower - lower).max()
        assert bool((b.upper.double() >= upper - CONIC_TOL * (1 + upper.abs())).all()), (upper - b.upper).max()
        assert bool((b.lower.double() <= exact + TOL_ABS).all())


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_sound_for_any_multipliers(p):
    """The dual bound at random multipliers (nonnegative where they must be, free ones of either sign) never
    exceeds the SDP's optimum: the Lagrangian argument does not depend on the optimisation."""
    model, x = one_hidden(11, n=1)
    _, spec = margins(model, x)
    threat = LpBall(0.1 if p == math.inf else 0.5, p=p)
    lower, _ = conic(model, x, threat, spec)
    ((rel, (cost_s, cost_t, const)),) = relaxations(model, x, threat, spec)
    m, d = rel.w.shape
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        for r in range(len(const)):
            scale = 10.0 ** (trial % 4 - 2)
            lam = {k: scale * torch.rand(size, generator=gen, dtype=torch.float64)
                   for k, size in (("alpha", (d,)), ("lam0", (m,)), ("lam1", (m,)), ("beta", (m,)), ("gamma", ()))}
            lam["nu"] = scale * torch.randn(m, generator=gen, dtype=torch.float64)
            lam["mu"] = scale * torch.randn((), generator=gen, dtype=torch.float64)
            bound = sdp_fo.certified_bound(rel, cost_s[r], cost_t[r], float(const[r]), lam)
            assert bound <= float(lower[0, r]) + CONIC_TOL * (1 + abs(float(lower[0, r])))


def test_initial_point_gives_at_least_the_interval_bound():
    """Steps = 0: the closed-form dual point of the last layer's interval bound (with the polished mu); an error
    in assembling M would leave it far below."""
    model, x = one_hidden(3)
    _, spec = margins(model, x)
    threat = LpBall(0.1)
    items = relaxations(model, x, threat, spec)
    res = sdp_fo.sdp_fo([r for r, _ in items], [c for _, c in items], steps=0, step_size=0.05)
    for (rel, (cost_s, cost_t, const)), lower in zip(items, res.lower):
        interval = const - np.abs(cost_t).sum(1) + np.minimum(cost_s * rel.s_lo, cost_s * rel.s_hi).sum(1)
        assert np.all(lower >= interval - 1e-9 * (1 + np.abs(interval))), lower - interval
    assert res.steps == 0


def test_structured_products_and_supergradients_match_the_dense_matrix():
    """The iterations' ``M v`` (diagonal t block) and ``<A_i, v v^T>`` agree with the certificate's dense ``M``:
    ``v^T M v = v^T C v + sum_i lambda_i <A_i, v v^T>`` (M is affine in the multipliers)."""
    model, x = one_hidden(5)
    _, spec = margins(model, x)
    threat = LpBall(0.5, p=2.0)
    items = relaxations(model, x, threat, spec)
    data = sdp_fo._Data([r for r, _ in items], [c for _, c in items], dtype=torch.float64,
                        device=torch.device("cpu"))
    e, s, d, m = data.shape
    gen = torch.Generator().manual_seed(1)
    lam = {k: torch.rand(shape, generator=gen, dtype=torch.float64) * mask for k, shape, mask in (
        ("mu", (e, s), 1.0), ("alpha", (e, s, d), data.mask_t[:, None]), ("lam0", (e, s, m), data.mask_s[:, None]),
        ("lam1", (e, s, m), data.mask_s[:, None]), ("nu", (e, s, m), data.mask_s[:, None]),
        ("beta", (e, s, m), data.mask_s[:, None]), ("gamma", (e, s), 1.0))}
    v = torch.randn((e, s, 1 + d + m), generator=gen, dtype=torch.float64)
    mv = sdp_fo._matvec(data, sdp_fo._pieces(data, lam), v)
    forms = sdp_fo._forms(data, v)
    zero = {k: torch.zeros_like(t) for k, t in lam.items()}
    cost = (v * sdp_fo._matvec(data, sdp_fo._pieces(data, zero), v)).sum(-1)  # v^T C v
    linear = cost + sum((lam[k] * forms[k]).reshape(e, s, -1).sum(-1) for k in lam)
    torch.testing.assert_close((v * mv).sum(-1), linear)
    for i, (rel, (cost_s, cost_t, _)) in enumerate(items):
        mi, di = rel.w.shape
        keep = torch.cat([torch.arange(1 + di), 1 + d + torch.arange(mi)])
        for r in range(s):
            row = {k: t[i, r] for k, t in lam.items()}
            row = {k: t[:di] if k == "alpha" else t[:mi] if t.dim() == 1 else t for k, t in row.items()}
            dense, _ = sdp_fo.dense_dual_matrix(*(torch.as_tensor(a) for a in (rel.w, rel.b, rel.s_lo, rel.s_hi)),
                                                tuple(torch.as_tensor(a) for a in rel.ball),
                                                torch.as_tensor(cost_s[r]), torch.as_tensor(cost_t[r]), row)
            torch.testing.assert_close(dense @ v[i, r, keep], mv[i, r, keep])
            assert float(mv[i, r].abs()[~torch.isin(torch.arange(1 + d + m), keep)].sum()) == 0.0  # padding


def test_certified_min_eigenvalue_is_a_tight_lower_bound():
    gen = torch.Generator().manual_seed(2)
    for n in (1, 5, 60, 200):
        a = torch.randn(n, n, generator=gen, dtype=torch.float64)
        for matrix in (a + a.T, a @ a.T, a[:, : n // 2 + 1] @ a[:, : n // 2 + 1].T):  # indefinite, PD, singular
            exact = float(torch.linalg.eigvalsh(matrix)[0])
            scale = float(torch.linalg.matrix_norm(matrix))
            got = sdp_fo.certified_min_eigenvalue(matrix)
            assert exact - 1e-10 * scale <= got <= exact
            assert sdp_fo.certified_min_eigenvalue(matrix, 0.5) <= got - 0.5 + 1e-12 * scale
            assert sdp_fo.certified_min_eigenvalue(matrix, estimate=exact + 10.0) <= exact  # a wrong guess
    assert sdp_fo.certified_min_eigenvalue(torch.full((3, 3), math.nan, dtype=torch.float64)) == -math.inf


def test_best_mu_maximises_the_bound_over_mu():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    base = a @ a.T / 30 - 0.2 * torch.eye(30, dtype=torch.float64)
    trace = 31.0
    e0 = torch.zeros(30, 30, dtype=torch.float64)
    e0[0, 0] = 1.0

    def bound(mu: float) -> float:
        return mu + trace * min(0.0, float(torch.linalg.eigvalsh(base - mu * e0)[0]))

    mu, sigma = sdp_fo.best_mu(base, 0.0, trace)
    assert sigma == pytest.approx(min(0.0, float(torch.linalg.eigvalsh(base - mu * e0)[0])), abs=1e-8)
    grid = max(bound(float(t)) for t in torch.linspace(-20, 20, 4001))
    assert bound(mu) >= grid - 1e-9


def test_stopped_by_the_time_limit_is_still_sound():
    model, x = one_hidden(6)
    _, spec = margins(model, x)
    threat = LpBall(0.1)
    lower, _ = conic(model, x, threat, spec)
    items = relaxations(model, x, threat, spec)
    res = sdp_fo.sdp_fo([r for r, _ in items], [c for _, c in items], steps=1000, step_size=0.05, time_limit=1e-9)
    assert res.steps == 0 and np.all(np.isfinite(res.lower))
    assert np.all(res.lower <= lower.numpy() + CONIC_TOL * (1 + np.abs(lower.numpy())))


def test_cert10_examples_batched_together_match_one_at_a_time():
    """CERT-10: padded to the network's sizes, the products have the same shapes in any batch, so each example's
    bound is exactly the one it gets alone (padding to the batch's largest sizes instead changes the rounding,
    which the iterations amplify); the padding adds zero rows only, so it changes the bound by rounding only."""
    model, x = one_hidden(7, n=3)
    _, spec = margins(model, x)
    threat = LpBall(0.1)
    items = relaxations(model, x, threat, spec)
    assert len({r.w.shape for r, _ in items}) > 1  # different numbers of unstable ReLUs
    pad = (model[0].in_features, model[0].out_features)
    together = sdp_fo.sdp_fo([r for r, _ in items], [c for _, c in items], steps=30, step_size=0.05, pad=pad)
    for (rel, cost), lower in zip(items, together.lower):
        alone = sdp_fo.sdp_fo([rel], [cost], steps=30, step_size=0.05, pad=pad).lower[0]
        np.testing.assert_array_equal(lower, alone)
        tight = sdp_fo.sdp_fo([rel], [cost], steps=1, step_size=0.05, dtype=torch.float64).lower[0]
        padded = sdp_fo.sdp_fo([rel], [cost], steps=1, step_size=0.05, dtype=torch.float64, pad=pad).lower[0]
        np.testing.assert_allclose(padded, tight, rtol=1e-9, atol=1e-9)
    batch = SDP(solver="first-order", steps=30).bounds(model, x, threat, spec=spec)
    for n in range(len(x)):
        single = SDP(solver="first-order", steps=30).bounds(model, x[n : n + 1], threat, spec=spec[n : n + 1])
        assert torch.equal(batch.lower[n], single.lower[0]) and torch.equal(batch.upper[n], single.upper[0])


def test_eps_zero_with_relaxed_stable_relus_is_nearly_exact():
    """No free input (d = 0) and every ReLU relaxed: the activation box is the point itself, up to widening."""
    model, x = one_hidden(8)
    _, spec = margins(model, x)
    with torch.no_grad():
        value = torch.einsum("nsk,nk->ns", spec, model(x))
    b = SDP(solver="first-order", fix_stable=False, steps=20).bounds(model, x, LpBall(0.0), spec=spec)
    assert bool((b.lower <= value + 1e-5).all() and (b.lower >= value - 1e-3 * (1 + value.abs())).all())


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_within_the_stated_gap_of_the_conic_optimum_after_the_default_steps(seed):
    model, x = one_hidden(seed)
    _, spec = margins(model, x)
    threat = LpBall(0.1)
    lower, upper = conic(model, x, threat, spec)
    b = SDP(solver="first-order").bounds(model, x, threat, spec=spec)
    assert bool((b.lower.double() >= lower - GAP * (1 + lower.abs())).all()), (lower - b.lower).max()
    assert bool((b.upper.double() <= upper + GAP * (1 + upper.abs())).all()), (b.upper - upper).max()




def test_cert09_dual_status_certifies_only_a_bound_above_margin_tol(monkeypatch):
    (cert,) = certify(hand_net(*ROBUST), X_TIE, Y_TIE, LpBall(0.1), method=FO)
    assert cert.verdict == Verdict.CERTIFIED and cert.solver["status"] == ["dual"]
    assert 1.0 - 1e-3 <= cert.margin_lower[0] <= 1.0
    (cert,) = certify(hand_net(*NEAR_TIE), X_TIE, Y_TIE, LpBall(0.1), method=FO, margin_tol=0.0)
    assert cert.verdict == Verdict.UNKNOWN and cert.margin_lower[0] <= 1e-9
    monkeypatch.setattr(sdp_fo, "certified_min_eigenvalue", lambda *a, **k: -math.inf)  # eigenvalue not proven
    (cert,) = certify(hand_net(*ROBUST), X_TIE, Y_TIE, LpBall(0.1), method=FO)
    assert cert.verdict == Verdict.UNKNOWN and cert.solver["status"] == ["numerical"]
    assert cert.margin_lower == (-math.inf,)


def test_auto_solves_large_programs_with_the_first_order_dual(monkeypatch):
    model = hand_net(*ROBUST)
    (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method="sdp")  # order 5: SCS
    assert cert.solver["status"] == ["optimal"]
    monkeypatch.setattr(sdp_module, "AUTO_MAX_ORDER", 4)
    (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method=SDP(steps=50))
    assert cert.solver["status"] == ["dual"] and cert.verdict == Verdict.CERTIFIED


def test_bad_settings_raise_naming_the_value():
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        SDP(solver="first-order", steps=-1)
    with pytest.raises(TypeError, match="steps must be an int, got 2.5"):
        SDP(steps=2.5)
    for bad in (0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"step_size must be finite and > 0, got {bad}"):
            SDP(step_size=bad)
    with pytest.raises(ValueError, match="steps must be >= 0, got -3"):
        sdp_bounds(hand_net(*ROBUST), X_TIE, LpBall(0.1), solver="first-order", steps=-3)
    with pytest.raises(ValueError, match="solver must be one of .*got 'first_order'"):
        build_method("sdp", solver="first_order")
    assert build_method("sdp", solver="first-order", steps=10, step_size=0.1) == \
        SDP(solver="first-order", steps=10, step_size=0.1)
