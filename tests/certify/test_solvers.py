"""The LP relaxation and the exact MILP: soundness (CERT-01), exactness (CERT-02, CERT-04), the guaranteed
orderings (CERT-03), monotonicity (CERT-06), solver statuses and tolerances (CERT-09), and the certificate API.

Random ReLU nets come from the seeded generators of ``conftest.py``; the brute force of CERT-04 enumerates every
activation pattern of a tiny 2-D net and solves one LP per feasible pattern.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import optimize
from torch import nn

from trustlab import LpBall
from trustlab.certify import LP, MILP, Verdict, certify, crown_bounds, lp_bounds, margin_spec, milp_bounds, to_network
from trustlab.certify import milp as milp_module
from trustlab.certify import program as program_module
from trustlab.certify.program import ReluProgram, dense_layers, dual_bound, intermediate_bounds, solve_lp, widen

LINF = math.inf


def _margin_rows(model, x):
    y = model(x).argmax(1)
    return y, margin_spec(y, model(x).shape[1], dtype=x.dtype)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("seed", range(4))
def test_cert01_lp_and_milp_contain_sampled_and_pgd_points(seed, kind, random_net, extremes, contains):
    model, x = random_net(kind, seed, trained=seed % 2 == 1)
    y, spec = _margin_rows(model, x)
    for eps in (0.0, 1e-3, 0.05, 0.3):
        threat = LpBall(eps)
        seen_lo, seen_hi = extremes(model, x, threat, spec, seed=seed, samples=300)
        bounds = [lp_bounds(model, x, threat, spec=spec)]
        if kind == "mlp":  # a random CNN at eps 0.3 has hundreds of unstable ReLUs: minutes of branching
            bounds.append(milp_bounds(model, x, threat, spec=spec, time_limit=10))
        for b in bounds:
            contains(b.lower, b.upper, seen_lo, seen_hi)


def test_cert02_exact_at_eps_zero_and_on_a_linear_net(random_net):
    model, x = random_net("mlp", 7)
    y, spec = _margin_rows(model, x)
    want = torch.einsum("nsk,nk->ns", spec, model(x))
    for bound in (lp_bounds, milp_bounds):
        b = bound(model, x, LpBall(0.0), spec=spec)
        assert torch.allclose(b.lower, want, atol=1e-5) and torch.allclose(b.upper, want, atol=1e-5)
    gen = torch.Generator().manual_seed(3)
    linear = nn.Sequential(nn.Linear(6, 4)).eval()
    with torch.no_grad():
        linear[0].weight.copy_(torch.randn(4, 6, generator=gen))
    x = 0.2 + 0.6 * torch.rand(5, 6, generator=gen)  # the box [0, 1] does not clip at eps = 0.1
    closed = linear(x) - 0.1 * linear[0].weight.abs().sum(1)
    for bound in (lp_bounds, milp_bounds):
        assert torch.allclose(bound(linear, x, LpBall(0.1)).lower, closed, atol=1e-5)


def _brute_force_min(layers, x_lo, x_hi, row):
    """min of ``row . f`` over the box by enumerating the activation patterns of a one-hidden-layer net: on each
    pattern the net is affine and the set where it holds is a polytope, so one LP per pattern is exact."""
    (w0, b0), (w1, b1) = layers
    best = math.inf
    for pattern in itertools.product([0.0, 1.0], repeat=len(b0)):
        s = np.array(pattern)
        # active (s = 1): w0 x + b0 >= 0; inactive: w0 x + b0 <= 0; f = w1 diag(s) (w0 x + b0) + b1
        a_ub = np.where(s[:, None] == 1, -w0, w0)
        b_ub = np.where(s == 1, b0, -b0)
        cost = row @ w1 @ (s[:, None] * w0)
        const = row @ (w1 @ (s * b0) + b1)
        res = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=np.stack([x_lo, x_hi], 1), method="highs")
        if res.status == 0:
            best = min(best, res.fun + const)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_cert04_milp_equals_enumeration_of_activation_patterns_and_counterexamples_are_real(seed):
    gen = torch.Generator().manual_seed(seed)
    hidden, k = 6, 3
    model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, k)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.rand(4, 2, generator=gen)
    y, spec = _margin_rows(model, x)
    threat = LpBall(0.15)
    net = to_network(model, x)
    layers = dense_layers(net)
    exact = milp_bounds(model, x, threat, spec=spec, intermediate="interval").lower.double()
    lo, hi = threat.box(x)
    for n in range(len(x)):
        for s in range(k - 1):
            want = _brute_force_min(layers, lo[n].double().numpy(), hi[n].double().numpy(),
                                    spec[n, s].double().numpy())
            assert float(exact[n, s]) == pytest.approx(want, abs=1e-5)
    # every FALSIFIED verdict carries a point of the threat set that the float32 model misclassifies
    certs = certify(model, x, y, LpBall(0.4), method=MILP(early_stop=False))
    for c in certs:
        if c.verdict is Verdict.FALSIFIED:
            xc = c.counterexample.unsqueeze(0)
            assert bool(LpBall(0.4).contains(xc, x[c.index : c.index + 1], atol=1e-6).all())  # float32 x + eps
            assert int(model(xc).argmax(1)) != int(y[c.index])
        elif c.verdict is Verdict.CERTIFIED:
            assert all(s == "optimal" for s in c.solver["status"])


@pytest.mark.parametrize("seed", range(40))
def test_cert03_milp_at_least_lp_at_least_crown_and_at_most_pgd(seed, random_net, monkeypatch):
    """With the same (CROWN) intermediate bounds: MILP >= LP >= CROWN, and MILP <= the smallest margin PGD finds.
    Run on 40 random nets per commit (x 3 examples x up to 4 margins); the slow suite runs 200. The nets are in
    float64 and the programs' safety widening of float32 intermediate bounds is shrunk to 1e-12, so that the
    bounds are the same up to float64 rounding."""
    monkeypatch.setattr(program_module, "BOUND_WIDENING", 1e-12)
    _ordering_on_net(seed, random_net)


@pytest.mark.slow
def test_cert03_on_200_random_nets(random_net, monkeypatch):
    monkeypatch.setattr(program_module, "BOUND_WIDENING", 1e-12)
    for seed in range(200):
        _ordering_on_net(1000 + seed, random_net, cnn_every=5)


def _ordering_on_net(seed, random_net, *, cnn_every=0):
    model, x = random_net("cnn" if cnn_every and seed % cnn_every == 0 else "mlp", seed, trained=seed % 2 == 0,
                          dtype=torch.float64)
    y, spec = _margin_rows(model, x)
    threat = LpBall((0.02, 0.05, 0.1)[seed % 3])
    crown = crown_bounds(model, x, threat, spec=spec).lower.double()
    lp = lp_bounds(model, x, threat, spec=spec, intermediate="crown").lower.double()
    exact = milp_bounds(model, x, threat, spec=spec, intermediate="crown", time_limit=30).lower.double()
    slack = 1e-6 * (1 + crown.abs())  # the solvers' feasibility tolerances
    assert bool((lp >= crown - slack).all()), (lp - crown).min()
    assert bool((exact >= lp - slack).all()), (exact - lp).min()
    found = _pgd_min_margins(model, x, spec, threat, seed)
    assert bool((exact <= found.double() + 1e-5).all()), (found - exact).min()


def _pgd_min_margins(model, x, spec, threat, seed, steps=40):
    """The smallest ``C f(x')`` that PGD finds per example and row, from the centre and from random starts."""
    n, s = spec.shape[:2]
    centre = x.repeat_interleave(s, 0)
    rows = spec.reshape(n * s, -1)
    gen = torch.Generator().manual_seed(seed)
    best = torch.einsum("rk,rk->r", rows, model(centre)).detach()
    for start in (centre, threat.random_init(centre, generator=gen)):
        x_adv = start.clone()
        for _ in range(steps):
            x_in = x_adv.detach().requires_grad_(True)
            val = torch.einsum("rk,rk->r", rows, model(x_in))
            (grad,) = torch.autograd.grad(val.sum(), x_in)
            x_adv = threat.project(x_adv - 2.5 * threat.eps / steps * threat.ascent_direction(grad), centre)
            best = torch.minimum(best, torch.einsum("rk,rk->r", rows, model(x_adv)).detach())
    return best.view(n, s)


@pytest.mark.parametrize("seed", range(3))
def test_cert06_lp_and_milp_are_monotone_in_eps(seed, random_net):
    model, x = random_net("mlp", 20 + seed, trained=True)
    y, spec = _margin_rows(model, x)
    for bound in (lp_bounds, milp_bounds):
        previous = None
        for eps in (0.0, 0.01, 0.03, 0.1):
            lower = bound(model, x, LpBall(eps), spec=spec, intermediate="interval").lower
            if previous is not None:
                assert bool((lower <= previous + 1e-5).all())
            previous = lower


def test_lp_dual_bound_is_rigorous_and_tight(random_net):
    model, x = random_net("mlp", 2, trained=True)
    net = to_network(model, x[:1])
    threat = LpBall(0.1)
    layers = dense_layers(net)
    pre = intermediate_bounds(net, x[:1], threat, "crown")
    lo, hi = (t.flatten().double().numpy() for t in threat.box(x[:1]))
    program = ReluProgram(layers, lo, hi, [widen(a[0].double().numpy(), b[0].double().numpy()) for a, b in pre])
    for row in np.eye(net.num_classes):
        cost, const = program.objective(row)
        res = solve_lp(program, cost, const)
        assert res.status == "optimal" and res.lower <= res.value + 1e-12
        assert res.lower == pytest.approx(res.value, abs=1e-7)
        # a wrong multiplier (zero) still gives a valid, looser bound: weak duality holds for any y_ub <= 0
        fake = optimize.OptimizeResult(ineqlin=optimize.OptimizeResult(marginals=np.zeros(program.a_ub.shape[0])),
                                       eqlin=optimize.OptimizeResult(marginals=np.zeros(program.a_eq.shape[0])))
        assert dual_bound(program, cost, fake) + const <= res.value + 1e-12


def test_lp_intermediate_bounds_are_at_least_as_tight_as_crown_and_sound(random_net, extremes):
    model, x = random_net("mlp", 5, trained=True)
    net = to_network(model, x)
    threat = LpBall(0.1)
    crown = intermediate_bounds(net, x, threat, "crown")
    lp = intermediate_bounds(net, x, threat, "lp")
    interval = intermediate_bounds(net, x, threat, "interval")
    for (cl, cu), (ll, lu), (il, iu) in zip(crown, lp, interval):
        assert bool((ll >= cl - 1e-6).all() and (lu <= cu + 1e-6).all())
        assert bool((il <= ll + 1e-5).all() and (iu >= lu - 1e-5).all())


# ---------------------------------------------------------------------------------------------------- CERT-09


class _FakeMilp:
    """``scipy.optimize.milp`` replaced by a result with a given status and dual bound."""

    def __init__(self, status, dual, fun=None, x=None):
        self.status, self.dual, self.fun, self.x = status, dual, fun, x

    def __call__(self, c, **kwargs):
        return optimize.OptimizeResult(status=self.status, mip_dual_bound=self.dual, fun=self.fun, x=self.x,
                                       success=self.status == 0, message="mocked")


def _unstable_net():
    """A net with unstable ReLUs at eps 0.3, so that the MILP has binaries (and calls scipy's milp)."""
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [-1.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([-0.5, -0.5, 0.0, 0.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[0.5, 0.5]])
    return model, x


@pytest.mark.parametrize("status", [1, 2, 3, 4], ids=["time-limit", "infeasible", "unbounded", "other"])
def test_cert09_any_status_but_optimal_is_unknown_even_with_a_positive_dual_bound(status, monkeypatch):
    model, x = _unstable_net()
    y = model(x).argmax(1)
    monkeypatch.setattr(milp_module.optimize, "milp", _FakeMilp(status, dual=-0.5))
    [cert] = certify(model, x, y, LpBall(0.3), method=MILP(early_stop=False))
    assert cert.verdict is Verdict.UNKNOWN
    assert cert.solver["status"][0] == {1: "limit", 2: "infeasible", 3: "unbounded", 4: "numerical"}[status]
    # the margin row is e_0 - e_1 and its constant b_0 - b_1 = 1: a time limit keeps the proven bound 0.5 > 0,
    # any other status proves nothing
    assert cert.margin_lower[0] == (0.5 if status == 1 else -math.inf)


def test_cert09_time_limit_keeps_only_the_proven_dual_bound(monkeypatch):
    model, x = _unstable_net()
    y = model(x).argmax(1)
    monkeypatch.setattr(milp_module.optimize, "milp", _FakeMilp(1, dual=-0.25))
    [cert] = certify(model, x, y, LpBall(0.3), method=MILP(early_stop=False))
    assert cert.verdict is Verdict.UNKNOWN and cert.margin_lower[0] == pytest.approx(-0.25 + 1.0)


def test_cert09_optimal_needs_the_bound_above_margin_tol_plus_solver_tolerance(monkeypatch):
    model, x = _unstable_net()
    y = model(x).argmax(1)
    size = ReluProgram(dense_layers(to_network(model, x)), np.zeros(2), np.ones(2),
                       [(-np.ones(4), np.ones(4))], integer=True).size
    point = np.concatenate([x[0].double().numpy(), np.zeros(size - 2)])
    monkeypatch.setattr(milp_module.optimize, "milp", _FakeMilp(0, dual=-1.0 + 5e-7, fun=-1.0 + 5e-7, x=point))
    [cert] = certify(model, x, y, LpBall(0.3), method=MILP(early_stop=False), margin_tol=0.0)
    assert cert.verdict is Verdict.UNKNOWN  # 5e-7 is under the solver tolerance 1e-6: no certificate


class _RecordingMilp(_FakeMilp):
    """A :class:`_FakeMilp` that keeps the options of each call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.options = []

    def __call__(self, c, **kwargs):
        self.options.append(dict(kwargs["options"]))
        return super().__call__(c, **kwargs)


@pytest.mark.parametrize("lp_status", ["optimal", "infeasible"])
def test_cert09_an_empty_search_below_the_cutoff_certifies_only_on_a_feasible_program(lp_status, monkeypatch):
    """Under early_stop the MILP searches below a cutoff just above the certificate level; HiGHS's "infeasible"
    then proves the margin above it, but only if the relaxation showed the program feasible: on a program whose
    relaxation is not optimal, "infeasible" stays UNKNOWN and no cutoff is passed."""
    model, x = _unstable_net()
    y = model(x).argmax(1)
    fake = _RecordingMilp(2, dual=None)
    monkeypatch.setattr(milp_module.optimize, "milp", fake)
    monkeypatch.setattr(milp_module, "solve_lp",  # a relaxation that does not decide the sign
                        lambda *a, **k: program_module.LPResult(-0.5, -0.5, lp_status, 0.0))
    margin_tol = 1e-3
    [cert] = certify(model, x, y, LpBall(0.3), method=MILP(attack_steps=0), margin_tol=margin_tol)
    tol = MILP.tolerance
    if lp_status == "optimal":
        assert cert.verdict is Verdict.CERTIFIED and cert.solver["status"] == ["cutoff"]
        assert cert.margin_lower[0] == pytest.approx(margin_tol + 2 * tol, abs=1e-12)
        assert cert.margin_lower[0] > margin_tol + tol
        # the margin row e_0 - e_1 has the constant 1: the cutoff on the objective is the level less 1
        assert fake.options[0]["objective_bound"] == pytest.approx(margin_tol + 3 * tol - 1.0, abs=1e-12)
    else:
        assert cert.verdict is Verdict.UNKNOWN and cert.solver["status"] == ["infeasible"]
        assert cert.margin_lower[0] == -math.inf and "objective_bound" not in fake.options[0]
    [full] = certify(model, x, y, LpBall(0.3), method=MILP(early_stop=False), margin_tol=margin_tol)
    assert full.verdict is Verdict.UNKNOWN and "objective_bound" not in fake.options[-1]  # exact margins: no cutoff
    MILP(attack_steps=0).bounds(model, x, LpBall(0.3), spec=margin_spec(y, 2, dtype=x.dtype))
    assert len(fake.options) == 4 and all("objective_bound" not in o for o in fake.options[2:])  # bounds: none


def test_cert09_cutoff_verdicts_equal_the_exact_milp_and_its_bounds_are_below_the_optimum(random_net):
    """The early-stopping MILP (LP check, then branch and bound below the cutoff) gives the verdict of the exact
    MILP on 16 random nets and settings, and every bound it records, ``cutoff`` ones included, is at most the
    exact margin. Interval big-M and eps up to 0.2 leave margins the LP cannot decide, so the cutoff is used."""
    statuses = []
    for seed, eps in itertools.product(range(8), (0.1, 0.2)):
        model, x = random_net("mlp", 300 + seed, trained=seed % 2 == 0, dtype=torch.float64)
        y = model(x).argmax(1)
        fast = certify(model, x, y, LpBall(eps), method=MILP(attack_steps=0, intermediate="interval"))
        exact = certify(model, x, y, LpBall(eps), method=MILP(early_stop=False, intermediate="interval"))
        for f, e in zip(fast, exact):
            statuses += f.solver["status"]
            assert f.verdict is e.verdict, (seed, eps, f.solver, e.solver)
            if f.verdict is not Verdict.FALSIFIED:
                for a, b, status in zip(f.margin_lower, e.margin_lower, f.solver["status"]):
                    assert a <= b + 1e-6 * (1 + abs(b)), (seed, eps, status, a, b)
    assert statuses.count("cutoff") >= 5 and statuses.count("bound") >= 5  # both early stops were exercised


def test_cert09_near_tie_is_never_certified():
    """Two logits that differ by 1e-9 everywhere: the margin is positive but below every tolerance."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval().double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2, dtype=torch.float64))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.ones(2, 2, dtype=torch.float64))
        model[2].bias.copy_(torch.tensor([1e-9, 0.0], dtype=torch.float64))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    for method in (LP(), MILP(), MILP(early_stop=False)):
        [cert] = certify(model, x, y, LpBall(0.1), method=method)
        assert cert.verdict is Verdict.UNKNOWN, method


# ------------------------------------------------------------------------------------------------- the API


def test_certify_with_solvers_gives_statuses_and_agrees_with_crown(small_model, test_batch):
    x, y = test_batch[0][:6], test_batch[1][:6]
    threat = LpBall(0.05)
    crown = certify(small_model, x, y, threat, method="crown")
    for method in ("lp", "milp"):
        certs = certify(small_model, x, y, threat, method=method)
        for c, b in zip(certs, crown):
            assert c.method == method and len(c.solver["status"]) == 9
            if b.certified:
                assert c.verdict is Verdict.CERTIFIED  # LP and MILP are at least as tight as CROWN
            assert c.to_record()["solver"]["status"] == c.solver["status"]
    full = certify(small_model, x, y, threat, method=MILP(early_stop=False, intermediate="crown"))
    lp = certify(small_model, x, y, threat, method="lp")
    for f, c in zip(full, lp):
        if f.verdict is not Verdict.FALSIFIED and c.verdict is not Verdict.FALSIFIED:
            assert all(a >= b - 1e-5 for a, b in zip(f.margin_lower, c.margin_lower))


def test_solvers_refuse_l2_and_bad_settings(small_model, test_batch):
    x, y = test_batch[0][:2], test_batch[1][:2]
    for method in ("lp", "milp"):
        with pytest.raises(ValueError, match="l_inf ball only"):
            certify(small_model, x, y, LpBall(0.1, 2), method=method)
    with pytest.raises(ValueError, match="intermediate must be one of"):
        MILP(intermediate="alpha")
    with pytest.raises(ValueError, match="time_limit must be finite and > 0, got 0"):
        MILP(time_limit=0)
    with pytest.raises(TypeError, match="early_stop must be a bool"):
        MILP(early_stop=1)


def test_milp_attacks_first_and_falsifies_with_a_rechecked_counterexample(small_model, test_batch):
    x, y = test_batch[0][:4], test_batch[1][:4]
    threat = LpBall(0.3)  # far beyond what the digits MLP withstands: PGD breaks every example
    certs = certify(small_model, x, y, threat, method=MILP(time_limit=5))
    for c in certs:
        assert c.verdict is Verdict.FALSIFIED
        xc = c.counterexample.unsqueeze(0)
        assert bool(threat.contains(xc, x[c.index : c.index + 1], atol=1e-6).all())
        assert int(small_model(xc).argmax(1)) != c.label
        if int(small_model(x[c.index : c.index + 1]).argmax(1)) == c.label:  # not misclassified at x itself
            assert c.solver["status"].count("attack") == 1 and set(c.solver["status"]) == {"attack", "skipped"}
    with pytest.raises(ValueError, match="attack_steps must be >= 0"):
        MILP(attack_steps=-1)
