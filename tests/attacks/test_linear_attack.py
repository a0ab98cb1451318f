"""Ground truth on linear models (FX-LIN): the closed-form attack, and FGSM/PGD against it (EVAL-08, EVAL-12).

For a linear model the exact robust margin of (x, y) in an l_p ball is ``min_j m_j - eps * ||w_y - w_j||_q``
with ``m_j = (w_y - w_j)·x + b_y - b_j`` and q the dual exponent (1 for p = inf, 2 for p = 2), provided the box
is inactive. Examples whose exact margin is within ``TIE`` of 0 are floating-point ties, where either answer is
right; they are left out of the equality checks (and counted, so a fixture full of ties would show).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import FGSM, PGD, Linear, fgsm, linear_attack, pgd, predict

TIE = 1e-4
EPS_GRID = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25]  # all < 0.3: the box is inactive for x in [0.3, 0.7]


def exact_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """``(N,)`` float64 exact robust margin of a multi-logit linear model (positive iff robust)."""
    lin = model[-1] if isinstance(model, nn.Sequential) else model
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.flatten(1).double() @ w.T + b
    out = torch.full((len(x),), math.inf, dtype=torch.float64)
    for j in range(w.shape[0]):
        dw = w[y] - w[j]
        dual = dw.abs().sum(1) if p == math.inf else dw.norm(dim=1)
        r = (z.gather(1, y[:, None]).squeeze(1) - z[:, j]) - eps * dual
        out = torch.where(y == j, out, torch.minimum(out, r))
    return out


def robust(model, x_adv, y) -> torch.Tensor:
    return predict(model, x_adv) == y


def assert_box_inactive(x, eps):
    assert (x - eps >= 0).all() and (x + eps <= 1).all()


def attacks(p: float) -> dict[str, object]:
    return {
        "fgsm": lambda t: FGSM(t),
        "pgd": lambda t: PGD(t, steps=20),
        "pgd-margin": lambda t: PGD(t, steps=20, loss="margin"),
        "pgd-no-random-start": lambda t: PGD(t, steps=20, random_start=False),
        "linear": lambda t: Linear(t),
    }


@pytest.mark.parametrize("eps", EPS_GRID)
def test_eval08_fxlin_linf_fgsm_pgd_linear_equal_analytic(eps, linear_binary):
    model, x, y = linear_binary
    assert_box_inactive(x, eps)
    threat = LpBall(eps)
    margin = exact_margin(model, x, y, eps, math.inf)
    decided = margin.abs() > TIE
    assert decided.sum() >= len(x) - 1, "fixture has too many float ties to test equality"
    truth = (margin > 0)[decided]
    g = torch.Generator().manual_seed(0)
    for x_adv in (fgsm(model, x, y, threat), pgd(model, x, y, threat, generator=g), linear_attack(model, x, y, threat)):
        assert torch.equal(robust(model, x_adv, y)[decided], truth)


@pytest.mark.parametrize("p", [math.inf, 2.0])
@pytest.mark.parametrize("eps", EPS_GRID)
def test_eval12_every_attack_is_an_upper_bound(p, eps, linear_binary):
    model, x, y = linear_binary
    threat = LpBall(eps, p=p)
    margin = exact_margin(model, x, y, eps, p)
    decided = margin.abs() > TIE
    for name, make in attacks(p).items():
        r = robust(model, make(threat)(model, x, y, generator=torch.Generator().manual_seed(1)), y)
        assert r.sum() >= (margin > 0).sum(), name
        assert r[decided & (margin > 0)].all(), name  # nothing certifiably robust is ever broken


@pytest.mark.parametrize("eps", [0.2, 0.5, 0.8, 1.0])  # l2 radii with the box still inactive per coordinate
def test_eval12_l2_linear_and_fgm_exact_pgd_within_one(eps, linear_binary):
    model, x, y = linear_binary
    eps = eps * 0.29  # max coordinate change of an l2 step is <= eps
    assert_box_inactive(x, eps)
    threat = LpBall(eps, p=2)
    margin = exact_margin(model, x, y, eps, 2.0)
    decided = margin.abs() > TIE
    truth = margin > 0
    for x_adv in (linear_attack(model, x, y, threat), fgsm(model, x, y, threat)):
        assert torch.equal(robust(model, x_adv, y)[decided], truth[decided])
    r_pgd = robust(model, pgd(model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0)), y)
    assert 0 <= int(r_pgd.sum()) - int(truth.sum()) <= 1


def multiclass_linear(k: int = 10, d: int = 20, n: int = 100):
    g = torch.Generator().manual_seed(11)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(0.1 * torch.randn(k, generator=g, dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x).argmax(1)
    return lin.eval(), x, y


@pytest.mark.parametrize(("p", "eps"), [(math.inf, 0.02), (math.inf, 0.08), (2.0, 0.1), (2.0, 0.25)])
def test_eval12_multiclass_linear_attack_attains_exact_margin(p, eps):
    """In float64, the worst margin at the returned point equals the exact robust margin (box inactive)."""
    model, x, y = multiclass_linear()
    assert_box_inactive(x, eps)
    x_adv = linear_attack(model, x, y, LpBall(eps, p=p))
    with torch.no_grad():
        z = model(x_adv)
    z_y = z.gather(1, y[:, None])
    worst = (z_y - z).scatter(1, y[:, None], math.inf).amin(1)
    assert torch.allclose(worst, exact_margin(model, x, y, eps, p), rtol=0, atol=1e-9)
    margin = exact_margin(model, x, y, eps, p)
    assert 0 < (margin > 0).sum() < len(x)  # the grid point is informative
    pgd_robust = robust(model, pgd(model, x, y, LpBall(eps, p=p), steps=20), y)
    assert not (pgd_robust < (margin > 0)).any()  # PGD never breaks a robust point


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_linear_attack_single_logit_binary(p):
    """K = 1 (logit > 0 means class 1): the step -s * eps * sign(w) (or w/||w||) attains |w·x+b| - eps*||w||_q."""
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(12, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, 12, generator=g, dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(50, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        s = lin(x).squeeze(1)
    y = (s > 0).long()
    eps = 0.1
    w = lin.weight.detach()[0]
    dual = w.abs().sum() if p == math.inf else w.norm()
    x_adv = linear_attack(lin, x, y, LpBall(eps, p=p))
    with torch.no_grad():
        s_adv = lin(x_adv).squeeze(1)
    sign = 2 * y.double() - 1
    assert torch.allclose(sign * s_adv, s.abs() - eps * dual, rtol=0, atol=1e-9)
    assert 0 < ((s.abs() - eps * dual) > 0).sum() < len(x)


def test_linear_attack_on_flattened_images_respects_the_box(digits_xy):
    """nn.Sequential(Flatten, Linear) on 8x8 digits, where the box is active: output stays in it."""
    x, _ = digits_xy
    x = x[:100]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    y = predict(model, x)
    threat = LpBall(0.3)
    x_adv = linear_attack(model, x, y, threat)
    assert x_adv.shape == x.shape and threat.contains(x_adv, x).all()
    # the box only helps the defender: robust accuracy is at least the box-free exact value
    assert robust(model, x_adv, y).sum() >= (exact_margin(model, x, y, 0.3, math.inf) > 0).sum()


def test_linear_attack_rejects_other_models_and_sizes(small_model, test_batch, linear_binary):
    x, y = test_batch
    with pytest.raises(ValueError, match=r"Sequential\(Flatten, Linear, ReLU, Linear\)"):
        linear_attack(small_model, x, y, LpBall(0.1))
    with pytest.raises(ValueError, match="Conv2d"):
        linear_attack(nn.Conv2d(1, 2, 3), x, y, LpBall(0.1))
    lin, xl, yl = linear_binary
    with pytest.raises(ValueError, match="expects 16"):
        linear_attack(nn.Sequential(nn.Flatten(), lin), x, y, LpBall(0.1))
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        linear_attack(lin, xl.view(64, 1, 4, 4), yl, LpBall(0.1))
    with pytest.raises(ValueError, match=r"label 2 out of range \[0, 2\)"):
        linear_attack(lin, xl, torch.full_like(yl, 2), LpBall(0.1))
    with pytest.raises(ValueError, match="untargeted"):
        Linear(LpBall(0.1))(lin, xl, yl, y_target=1 - yl)
