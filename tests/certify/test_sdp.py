"""The SDP relaxation (Raghunathan et al. 2018): soundness by sampling (CERT-01), exactness at eps = 0 (CERT-02a),
below the exact MILP, solver statuses and tolerances (CERT-09), and its errors.

Random nets have one hidden layer (2-6 inputs, 2-8 ReLUs, 2-4 classes, weights N(0, 1), seeded generators), so
that every SDP is tiny (a PSD matrix of order <= 15).
"""

from __future__ import annotations

import math
import sys

import cvxpy as cp
import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import SDP, Verdict, build_method, certify, ibp_bounds, margin_spec, milp_bounds, sdp_bounds
from trustlab.errors import MissingDependencyError

TOL_ABS, TOL_REL = 1e-4, 1e-5  # float32 slack of a bound over a sampled value (conftest's CERT-01 TOL_BOUND)
TOL_EXACT = 1e-4  # eps = 0: the SDP is exact; its value is within the solver's tolerances (1e-6) times the scale
SEEDS = range(6)


def one_hidden(seed: int, *, n: int = 3, sizes: tuple[tuple[int, int], ...] = ((2, 6), (2, 8), (2, 4)),
               base: int = 2000) -> tuple[nn.Module, torch.Tensor]:
    """A random ``Linear, ReLU, Linear`` (inputs, hidden units and classes drawn from ``sizes``, seeded by
    ``base + seed``) and ``n`` inputs in [0, 1]."""
    gen = torch.Generator().manual_seed(base + seed)
    d, h, k = (int(torch.randint(lo, hi + 1, (1,), generator=gen)) for lo, hi in sizes)
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return model.eval(), torch.rand(n, d, generator=gen)


def hand_net(out_weight: list[list[float]], out_bias: list[float]) -> nn.Module:
    """2 inputs, ReLUs of ``x_1 - x_2`` and ``x_2 - x_1`` (both unstable around x_1 = x_2), a given last layer."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor(out_weight))
        model[2].bias.copy_(torch.tensor(out_bias))
    return model.eval()


X_TIE, Y_TIE = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
ROBUST = ([[1.0, 1.0], [0.0, 0.0]], [1.0, 0.0])  # f_0 - f_1 = |x_1 - x_2| + 1 >= 1
NEAR_TIE = ([[1.0, 0.0], [0.0, 0.0]], [1e-9, 0.0])  # f_0 - f_1 = relu(x_1 - x_2) + 1e-9, minimum 1e-9


def labelled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y = model(x).argmax(1)
    return y, margin_spec(y, model[2].out_features)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p, eps", [(math.inf, 0.05), (math.inf, 0.3), (2.0, 0.3)])
def test_bounds_contain_sampled_margins(seed, p, eps, extremes):
    """CERT-01: every margin at sampled points, box corners, PGD points and the clean point is within the bounds."""
    model, x = one_hidden(seed)
    y, spec = labelled(model, x)
    threat = LpBall(eps, p=p)
    bounds = sdp_bounds(model, x, threat, spec=spec)
    lo_seen, hi_seen = extremes(model, x, threat, spec, seed=seed)
    with torch.no_grad():
        clean = torch.einsum("nsk,nk->ns", spec, model(x))
    lo_seen, hi_seen = torch.minimum(lo_seen, clean), torch.maximum(hi_seen, clean)
    assert bool(torch.isfinite(bounds.lower).all() and torch.isfinite(bounds.upper).all())  # every SDP optimal
    tol = TOL_ABS + TOL_REL * torch.maximum(lo_seen.abs(), hi_seen.abs())
    assert bool((bounds.lower <= lo_seen + tol).all()), (bounds.lower - lo_seen).max()
    assert bool((bounds.upper >= hi_seen - tol).all()), (hi_seen - bounds.upper).max()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", [SDP(), SDP(fix_stable=False, solver="CLARABEL")])
def test_eps_zero_is_exact(seed, config):
    """CERT-02(a): at eps = 0 (no free input; fixed or relaxed ReLUs) lower = upper = the margin, to TOL_EXACT."""
    model, x = one_hidden(seed)
    _, spec = labelled(model, x)
    bounds = config.bounds(model, x, LpBall(0.0), spec=spec)
    with torch.no_grad():
        value = torch.einsum("nsk,nk->ns", spec, model(x))
    tol = TOL_EXACT * (1 + value.abs())
    assert bool(((bounds.lower - value).abs() <= tol).all()), (bounds.lower - value).abs().max()
    assert bool(((bounds.upper - value).abs() <= tol).all()), (bounds.upper - value).abs().max()
    assert bool((bounds.lower <= value + 1e-6 * (1 + value.abs())).all())


@pytest.mark.parametrize("seed", SEEDS)
def test_between_interval_bounds_and_the_exact_milp(seed):
    """The SDP contains the network's graph (<= the MILP optimum) and the activation box (>= IBP, less slack);
    SCS and Clarabel agree."""
    model, x = one_hidden(seed)
    _, spec = labelled(model, x)
    threat = LpBall(0.1)
    exact = milp_bounds(model, x, threat, spec=spec).lower
    ibp = ibp_bounds(model, x, threat, spec=spec).lower
    scs = sdp_bounds(model, x, threat, spec=spec).lower
    clarabel = sdp_bounds(model, x, threat, spec=spec, solver="CLARABEL").lower
    for lower in (scs, clarabel):
        assert bool((lower <= exact + TOL_ABS + TOL_REL * exact.abs()).all()), (lower - exact).max()
        assert bool((lower >= ibp - 1e-3 * (1 + ibp.abs())).all()), (ibp - lower).max()
    assert torch.allclose(scs, clarabel, atol=1e-3, rtol=1e-4)


def test_certify_through_the_registry():
    model = hand_net(*ROBUST)
    for method in ("sdp", SDP(solver="CLARABEL"), build_method("sdp", eps_abs=1e-5)):
        (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method=method)
        assert cert.verdict == Verdict.CERTIFIED and cert.method == "sdp"
        assert cert.solver["status"] == ["optimal"]
        assert 1.0 - 1e-3 <= cert.margin_lower[0] <= 1.0
    (cert,) = certify(model, X_TIE, torch.tensor([1]), LpBall(0.1), method="sdp")  # misclassified: no solve
    assert cert.verdict == Verdict.FALSIFIED


@pytest.mark.parametrize("status, name", [(cp.OPTIMAL_INACCURATE, "inaccurate"), (cp.INFEASIBLE, "infeasible"),
                                          (cp.UNBOUNDED, "unbounded"), (cp.USER_LIMIT, "limit"),
                                          (cp.SOLVER_ERROR, "numerical"), (None, "numerical")])
def test_non_optimal_statuses_never_certify(monkeypatch, status, name):
    """CERT-09: a mocked solve returning any status but OPTIMAL (``None``: a raised SolverError) gives UNKNOWN
    and -inf, although the mocked value would certify."""

    def solve(self, *args, **kwargs):
        if status is None:
            raise cp.error.SolverError("mocked failure")
        self._status, self._value, self._solver_stats = status, 100.0, None
        return 100.0

    model = hand_net(*ROBUST)
    monkeypatch.setattr(cp.Problem, "solve", solve)
    (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method="sdp")
    assert cert.verdict == Verdict.UNKNOWN
    assert cert.margin_lower == (-math.inf,) and cert.solver["status"] == [name]


def test_optimal_value_loses_the_solver_tolerance(monkeypatch):
    """CERT-09: a mocked OPTIMAL whose margin is 1e-9 is not certified, even with margin_tol = 0."""

    def solve(self, *args, **kwargs):
        self._status, self._value, self._solver_stats = cp.OPTIMAL, 0.0, None  # margin = 1e-9 + 0
        return 0.0

    model = hand_net(*NEAR_TIE)
    monkeypatch.setattr(cp.Problem, "solve", solve)
    (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method="sdp", margin_tol=0.0)
    assert cert.verdict == Verdict.UNKNOWN and cert.solver["status"] == ["optimal"]
    assert cert.margin_lower[0] == pytest.approx(1e-9 - 2e-6, abs=1e-12)  # 1e-9 - eps_abs - eps_rel * (1 + 0)


@pytest.mark.parametrize("solver", ["SCS", "CLARABEL"])
def test_near_tie_is_not_certified(solver):
    """CERT-09: the true minimum margin is 1e-9; after the solver's slack the bound is below 0."""
    model = hand_net(*NEAR_TIE)
    (cert,) = certify(model, X_TIE, Y_TIE, LpBall(0.1), method=SDP(solver=solver), margin_tol=0.0)
    assert cert.verdict == Verdict.UNKNOWN and cert.solver["status"] == ["optimal"]
    assert -1e-3 < cert.margin_lower[0] < 0


@pytest.mark.parametrize("depth", [0, 2])
def test_other_depths_raise_before_any_solve(monkeypatch, depth):
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(2, 2), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(2, 2)).eval()
    monkeypatch.setattr(cp.Problem, "solve", lambda self, *a, **k: pytest.fail("solved"))
    with pytest.raises(ValueError, match=f"sdp supports one hidden layer, got depth {depth}"):
        sdp_bounds(model, X_TIE, LpBall(0.1))
    with pytest.raises(ValueError, match=f"sdp supports one hidden layer, got depth {depth}"):
        certify(model, X_TIE, Y_TIE, LpBall(0.1), method="sdp")


def test_missing_cvxpy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cvxpy", None)  # `import cvxpy` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'trustlab\[sdp\]'"):
        sdp_bounds(hand_net(*ROBUST), X_TIE, LpBall(0.1))


def test_configuration_is_validated():
    with pytest.raises(ValueError,
                       match=r"solver must be one of \('auto', 'first-order', 'SCS', 'CLARABEL'\), got 'MOSEK'"):
        SDP(solver="MOSEK")
    with pytest.raises(ValueError, match="eps_abs must be finite and > 0, got 0"):
        SDP(eps_abs=0)
    with pytest.raises(ValueError, match="time_limit must be finite and > 0, got -1"):
        SDP(time_limit=-1)
    with pytest.raises(TypeError, match="fix_stable must be a bool"):
        SDP(fix_stable="yes")
    assert build_method("sdp", solver="CLARABEL", time_limit=5.0) == SDP(solver="CLARABEL", time_limit=5.0)


def test_clarabel_refuses_programs_too_large_for_its_dense_factorisation(monkeypatch):
    monkeypatch.setattr("trustlab.certify.sdp.CLARABEL_MAX_BYTES", 1000)  # the hand net's 5 x 5 needs 1800 bytes
    monkeypatch.setattr(cp.Problem, "solve", lambda self, *a, **k: pytest.fail("solved"))
    (cert,) = certify(hand_net(*ROBUST), X_TIE, Y_TIE, LpBall(0.1), method=SDP(solver="CLARABEL"))
    assert cert.verdict == Verdict.UNKNOWN and cert.solver["status"] == ["memory"]
