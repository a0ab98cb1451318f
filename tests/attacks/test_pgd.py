"""PGD and FGSM on FX-SMALL: sanity properties of a correct attack (EVAL-04..08, EVAL-19) and PGD's mechanics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import default_step_size, fgsm, pgd, predict
from trustlab.errors import NumericalError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def broken(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example success, recomputed by the framework from the returned points (EVAL-02)."""
    return predict(model, x_adv) != y


# -- EVAL-04: an unbounded attack must win --------------------------------------------------------------------


def test_eval04_whole_box_reaches_full_success(small_model, test_batch):
    x, y = test_batch
    correct = predict(small_model, x) == y
    x_adv = pgd(small_model, x, y, LpBall(1.0), steps=200, step_size=0.1, restarts=5, generator=gen())
    assert broken(small_model, x_adv, y)[correct].all()


def test_eval04_grey_image_bound(small_model, test_batch):
    """Every x lies within l_inf 0.5 of the all-0.5 image, so robust accuracy <= share of its predicted class."""
    x, y = test_batch
    grey_class = predict(small_model, torch.full_like(x[:1], 0.5))
    bound = (y == grey_class).float().mean().item() + 0.01
    x_adv = pgd(small_model, x, y, LpBall(0.5), steps=200, step_size=0.05, restarts=5, generator=gen())
    assert (~broken(small_model, x_adv, y)).float().mean().item() <= bound


# -- EVAL-05/06/07: monotone in eps, steps and restarts -------------------------------------------------------


def test_eval05a_accuracy_non_increasing_in_eps(small_model, test_batch):
    x, y = test_batch
    eps_grid = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2]
    robust = [int((~broken(small_model, pgd(small_model, x, y, LpBall(e), steps=20, generator=gen()), y)).sum())
              for e in eps_grid]  # fmt: skip
    rises = [b - a for a, b in zip(robust, robust[1:])]
    assert max(rises) <= 1, robust
    assert robust[-1] < robust[0]  # the attack does something over the grid


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_eval06_doubling_steps_keeps_every_success(p, small_model, test_batch):
    x, y = test_batch
    eps, k = (0.08, 5) if p == math.inf else (0.6, 5)
    threat, step_size = LpBall(eps, p=p), 2.5 * eps / 5  # a step large enough to oscillate, fixed for k and 2k
    s_k = broken(small_model, pgd(small_model, x, y, threat, steps=k, step_size=step_size, generator=gen()), y)
    s_2k = broken(small_model, pgd(small_model, x, y, threat, steps=2 * k, step_size=step_size, generator=gen()), y)
    assert not (s_k & ~s_2k).any()
    assert 0 < s_k.sum() < len(y)  # the comparison is not vacuous


def test_eval07_more_restarts_keep_every_success_and_reproduce(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.06)
    runs = [pgd(small_model, x, y, threat, steps=5, restarts=r, generator=gen(7)) for r in (1, 2, 3)]
    success = [broken(small_model, a, y) for a in runs]
    for s_r, s_next in zip(success, success[1:]):
        assert not (s_r & ~s_next).any()
    assert torch.equal(runs[2], pgd(small_model, x, y, threat, steps=5, restarts=3, generator=gen(7)))
    assert 0 < success[0].sum() < len(y)


# -- EVAL-08: iterative beats single-step ---------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["small_model", "small_cnn"])
@pytest.mark.parametrize(("p", "eps"), [(math.inf, 0.05), (math.inf, 0.1), (2.0, 0.5)])
def test_eval08_pgd20_not_weaker_than_fgsm(model_name, p, eps, request, test_batch):
    model = request.getfixturevalue(model_name)
    x, y = test_batch
    threat = LpBall(eps, p=p)
    acc_fgsm = (~broken(model, fgsm(model, x, y, threat), y)).sum()
    acc_pgd = (~broken(model, pgd(model, x, y, threat, steps=20, generator=gen()), y)).sum()
    assert acc_pgd <= acc_fgsm


# -- EVAL-19: targeted mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_eval19_targeted_success_means_hitting_the_target(loss, small_model, test_batch):
    x, y = test_batch
    y_target = (y + 3) % 10
    hits_before = int((predict(small_model, x) == y_target).sum())
    x_adv = pgd(small_model, x, y, LpBall(0.2), steps=30, y_target=y_target, loss=loss, generator=gen())
    pred = predict(small_model, x_adv)
    assert int((pred == y_target).sum()) > hits_before
    # untargeted success that misses the target does not count: the targeted objective is what was maximized
    assert int((pred == y_target).sum()) >= int(((pred != y) & (pred != y_target)).sum())


def test_eval19_targeted_fgsm_moves_toward_target(small_model, test_batch):
    x, y = test_batch
    y_target = (y + 1) % 10
    before = (predict(small_model, x) == y_target).sum()
    after = (predict(small_model, fgsm(small_model, x, y, LpBall(0.2), y_target=y_target)) == y_target).sum()
    assert after > before


# -- PGD mechanics ---------------------------------------------------------------------------------------------


class CountingModel(nn.Module):
    """Wraps a model and counts forward calls and whether each ran with grad enabled."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[bool] = []

    def forward(self, x):
        self.calls.append(torch.is_grad_enabled())
        return self.inner(x)


@pytest.mark.parametrize("steps", [0, 1, 7])
def test_pgd_k_costs_k_gradient_passes_and_one_forward(steps, small_model, test_batch):
    x, y = test_batch
    model = CountingModel(copy.deepcopy(small_model)).eval()
    pgd(model, x, y, LpBall(0.1), steps=steps, generator=gen())
    assert model.calls == [True] * steps + [False]


def test_pgd_restarts_only_reattack_unbroken_points(small_model, test_batch):
    x, y = test_batch
    sizes: list[int] = []
    model = copy.deepcopy(small_model)
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    pgd(model, x, y, LpBall(0.05), steps=3, restarts=3, generator=gen())
    runs = [sizes[i] for i in range(0, len(sizes), 4)]  # 3 gradient steps + 1 evaluation per run
    assert runs[0] == len(x) and all(b < a for a, b in zip(runs, runs[1:]))


def test_pgd_steps0_returns_the_start_point(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.1)
    x0 = pgd(small_model, x, y, threat, steps=0, generator=gen(5))
    assert torch.equal(x0, threat.random_init(x, generator=gen(5)))
    x_plain = pgd(small_model, x, y, threat, steps=0, random_start=False)
    assert torch.equal(x_plain, x) and x_plain.data_ptr() != x.data_ptr()


def test_pgd_without_random_start_starts_at_x(small_model, test_batch):
    """One step from x with step_size eps is the fast gradient method when the step improves the loss."""
    x, y = test_batch
    threat = LpBall(0.05)
    one = pgd(small_model, x, y, threat, steps=1, step_size=0.05, random_start=False)
    fast = fgsm(small_model, x, y, threat)
    loss = nn.functional.cross_entropy
    with torch.no_grad():
        improved = loss(small_model(fast), y, reduction="none") > loss(small_model(x), y, reduction="none")
    assert torch.equal(one[improved], fast[improved])


BAND_CENTER, BAND_WIDTH = 0.6, 0.05


def band_model(c: float = BAND_CENTER, width: float = BAND_WIDTH) -> nn.Module:
    """A hand-weighted 1-D net: class 1 wins only in the band |x - c| < width (z_1 - z_0 = 1 - |x - c| / width).

    The loss gradient always points at c, so a step larger than the band makes PGD jump across it and back.
    """
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([-c, c]))  # hidden = (relu(x - c), relu(c - x))
        net[2].weight.copy_(torch.tensor([[0.0, 0.0], [-1 / width, -1 / width]]))
        net[2].bias.copy_(torch.tensor([0.0, 1.0]))
    return net.eval()


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("steps", [2, 4, 6])
def test_pgd_returns_the_best_iterate_not_the_last(loss, steps):
    """x oscillates 0.50 -> 0.63 (inside the band: broken) -> 0.50 -> ...; an even step count ends outside it."""
    model = band_model()
    x, y = torch.tensor([[0.5], [0.52]]), torch.tensor([0, 0])
    x_adv = pgd(model, x, y, LpBall(0.3), steps=steps, step_size=0.13, random_start=False, loss=loss)
    assert broken(model, x_adv, y).all()
    assert ((x_adv - BAND_CENTER).abs() < BAND_WIDTH).all()  # broken means inside the band


def test_pgd_ranking_prefers_success_over_loss():
    """A successful iterate is never replaced by an unsuccessful one, even one with a higher loss."""
    from trustlab.attacks.pgd import _keep_best  # the ranking rule itself; no trajectory shows it for K = 2

    x_b, x_c = torch.zeros(4, 1), torch.ones(4, 1)
    best = (x_b, torch.tensor([True, True, False, False]), torch.tensor([0.1, 0.5, 0.1, 0.5]))
    cand = (torch.tensor([False, True, True, False]), torch.tensor([9.0, 0.9, 0.0, 0.2]))
    x_new, s_new, o_new = _keep_best(best, x_c, *cand)
    assert x_new.squeeze(1).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert s_new.tolist() == [True, True, True, False]
    assert o_new.tolist() == pytest.approx([0.1, 0.9, 0.0, 0.5])


def test_pgd_default_step_size_and_generator(small_model, test_batch):
    x, y = test_batch
    eps, steps = 0.1, 10  # pgd's default steps
    threat = LpBall(eps)
    assert default_step_size(eps, steps) == pytest.approx(2.5 * eps / steps)  # Madry et al. 2018
    default = pgd(small_model, x, y, threat)
    explicit = pgd(small_model, x, y, threat, steps=steps, step_size=2.5 * eps / steps, generator=gen(0))
    assert torch.equal(default, explicit)  # None means a fresh generator seeded with 0


class NaNAfter(nn.Module):
    """Returns finite logits for the first ``n`` calls, NaN afterwards (a model that blows up mid-attack)."""

    def __init__(self, inner: nn.Module, n: int):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        self.calls += 1
        z = self.inner(x)
        return z * float("nan") if self.calls > self.n else z


@pytest.mark.parametrize(("n", "where"), [(0, "PGD step 0 of 5"), (3, "PGD step 3 of 5"), (5, "final evaluation")])
def test_inp06_nan_logits_raise_numerical_error_naming_the_step(n, where, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(NumericalError, match=where):
        pgd(NaNAfter(small_model, n).eval(), x, y, LpBall(0.1), steps=5, generator=gen())


def test_inp06_fgsm_nan_logits(small_model, test_batch):
    x, y = test_batch
    with pytest.raises(NumericalError, match="FGSM step 0"):
        fgsm(NaNAfter(small_model, 0).eval(), x, y, LpBall(0.1))


# -- losses ----------------------------------------------------------------------------------------------------


def test_losses_by_hand():
    from trustlab.attacks import LOSSES, cross_entropy, get_loss, margin, objective

    z = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([2, 0])
    assert margin(z, y).tolist() == [1.0 - 2.0, 0.0 - 3.0]  # max_{j != y} z_j - z_y
    assert torch.allclose(cross_entropy(z, y), torch.logsumexp(z, 1) - z[[0, 1], y])
    assert objective(z, y, y_target=t, loss="margin").tolist() == [1.0 - 2.0, 0.0 - 3.0]  # z_t - max_{j != t} z_j
    assert torch.equal(objective(z, y, y_target=t, loss="ce"), -cross_entropy(z, t))
    assert set(LOSSES) == {"ce", "margin", "dlr", "dlr-targeted"} and get_loss("margin") is margin
    with pytest.raises(ValueError, match=r"loss must be one of \['ce', 'dlr', 'dlr-targeted', 'margin'\], got 'dl'"):
        get_loss("dl")
