"""The Square attack (Andriushchenko et al. 2020): no gradients, queries counted per example and within the budget,
early stop per example, the schedule of square sizes, strength against PGD, and the side-effect rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import (
    Square,
    build_attack,
    margin,
    p_schedule,
    pgd,
    predict,
    side_length,
    square,
    square_with_queries,
)
from trustlab.attacks.square import meta_pseudo_gaussian, pseudo_gaussian, side_length_l2


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class RowLog(nn.Module):
    """Wraps a model and keeps every input row it is queried on, in order, with whether autograd was on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[torch.Tensor] = []
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.extend(x.detach().clone())
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(x)

    def per_example(self, x: torch.Tensor, eps: float, p: float = math.inf) -> list[list[torch.Tensor]]:
        """The rows queried for each example of ``x``: each row lies within ``eps`` (l_p) of exactly one."""
        out: list[list[torch.Tensor]] = [[] for _ in range(len(x))]
        for row in self.rows:
            near = ((x - row).flatten(1).norm(p=p, dim=1) <= eps + 1e-6).nonzero().squeeze(1)
            assert len(near) == 1
            out[int(near[0])].append(row)
        return out


def separated(x: torch.Tensor, y: torch.Tensor, eps: float, p: float = math.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``x`` farther than ``2 eps`` (l_p) from every other one, so a query names its example."""
    dist = (x.flatten(1)[:, None] - x.flatten(1)[None]).norm(p=p, dim=2)
    dist.fill_diagonal_(math.inf)
    keep = dist.amin(1) > 2 * eps
    return x[keep], y[keep]


# -- the schedule of p and the side of the square ------------------------------------------------------------


def reference_p_selection(p_init: float, it: int, n_iters: int) -> float:
    """p_selection of the authors' code (github.com/max-andr/square-attack, attack.py), written out again."""
    it = int(it / n_iters * 10000)
    if 10 < it <= 50:
        return p_init / 2
    if 50 < it <= 200:
        return p_init / 4
    if 200 < it <= 500:
        return p_init / 8
    if 500 < it <= 1000:
        return p_init / 16
    if 1000 < it <= 2000:
        return p_init / 32
    if 2000 < it <= 4000:
        return p_init / 64
    if 4000 < it <= 6000:
        return p_init / 128
    if 6000 < it <= 8000:
        return p_init / 256
    if 8000 < it <= 10000:
        return p_init / 512
    return p_init


def test_p_schedule_halves_at_the_papers_iterations_rescaled_to_the_budget():
    assert [p_schedule(i, 10_000, 0.8) for i in (0, 10, 11, 50, 51, 8000, 8001, 9999)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512, 0.8 / 512]  # fmt: skip
    # a budget of 1000 queries runs the same schedule ten times faster: iteration i is 10 i of 10,000
    assert [p_schedule(i, 1000, 0.8) for i in (1, 2, 5, 6, 800, 801)] == [0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512]
    for n in (3, 100, 1000, 5000, 10_000):
        for i in range(n - 2):
            assert p_schedule(i, n, 0.3) == reference_p_selection(0.3, i, n), (i, n)


def test_side_length_formula():
    # s = round(sqrt(p * n_features / c)) = round(sqrt(p * H * W)), in [1, min(H, W) - 1]
    assert side_length(0.8, 28, 28) == 25  # sqrt(627.2) = 25.04
    assert side_length(0.8 / 16, 32, 32) == 7  # sqrt(51.2) = 7.16
    assert side_length(0.8, 8, 8) == 7  # sqrt(51.2) = 7.16, and at most H - 1 = 7
    assert side_length(1.0, 8, 8) == 7  # capped
    assert side_length(0.8 / 512, 8, 8) == 1  # sqrt(0.1) rounds to 0: at least 1
    for p in (0.8 / 2**k for k in range(10)):
        for h, w in ((8, 8), (28, 28), (32, 32), (10, 20)):
            want = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1)
            assert side_length(p, h, w) == want


def test_side_length_l2_is_at_least_3_and_odd():
    # the reference code: max(round(sqrt(p * n_features / c)), 3), plus 1 if even; here also at most min(H, W)
    assert side_length_l2(0.8, 28, 28) == 25  # sqrt(627.2) = 25.04
    assert side_length_l2(0.8 / 4, 32, 32) == 15  # sqrt(204.8) = 14.3 -> 14, even -> 15
    assert side_length_l2(0.8, 8, 8) == 7  # sqrt(51.2) = 7.16
    assert side_length_l2(1.0, 8, 8) == 8  # 8 -> 9, capped at the image
    assert side_length_l2(0.8 / 512, 8, 8) == 3
    assert side_length_l2(0.8, 2, 2) == 2


def reference_pseudo_gaussian(x: int, y: int) -> torch.Tensor:
    """pseudo_gaussian_pert_rectangles of the authors' code (github.com/max-andr/square-attack), written out again."""
    delta = torch.zeros(x, y, dtype=torch.float64)
    x_c, y_c = x // 2 + 1, y // 2 + 1
    counter2 = [x_c - 1, y_c - 1]
    for counter in range(max(x_c, y_c)):
        delta[max(counter2[0], 0):min(counter2[0] + (2 * counter + 1), x),
              max(0, counter2[1]):min(counter2[1] + (2 * counter + 1), y)] += 1.0 / (counter + 1) ** 2
        counter2[0] -= 1
        counter2[1] -= 1
    return delta / delta.pow(2).sum().sqrt()


def test_pseudo_gaussian_squares_match_the_reference_code():
    for r in range(1, 12):
        for c in range(1, 12):
            assert torch.allclose(pseudo_gaussian(r, c), reference_pseudo_gaussian(r, c), rtol=1e-12, atol=0), (r, c)
    for s in range(1, 12):
        top = reference_pseudo_gaussian(s // 2, s) if s > 1 else torch.zeros(0, s, dtype=torch.float64)
        want = torch.cat([top, -reference_pseudo_gaussian(s - s // 2, s)])
        assert torch.allclose(meta_pseudo_gaussian(s), want / want.norm(), rtol=1e-12, atol=0), s
        assert math.isclose(float(meta_pseudo_gaussian(s).norm()), 1.0, rel_tol=1e-12)
    # mass in the centre of each half, opposite signs: M(5) rows 0-1 positive, rows 2-4 negative, peaks at (1, 2), (3, 2)
    m = meta_pseudo_gaussian(5)
    assert (m[:2] > 0).all() and (m[2:] < 0).all()
    assert m[:2].argmax() == 1 * 5 + 2 and m[2:].argmin() == 1 * 5 + 2


# -- queries: no gradients, counted per row, within the budget, early stop -------------------------------------


@pytest.mark.parametrize("threat", [LpBall(0.1), LpBall(0.5, p=2)], ids=["linf", "l2"])
def test_never_computes_a_gradient(threat, small_model, test_batch, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append("grad"))
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: calls.append("backward"))
    x, y = test_batch
    model = RowLog(small_model).eval()
    square(model, x, y, threat, queries=100, generator=gen())
    assert calls == []
    assert len(model.grad_enabled) > 2 and not any(model.grad_enabled)  # every forward ran without autograd


@pytest.mark.parametrize(("p", "eps", "budget"), [(math.inf, 0.05, 60), (math.inf, 0.1, 200), (2.0, 0.3, 60),
                                                  (2.0, 0.5, 200)])
def test_forward_rows_equal_the_reported_queries_and_never_exceed_the_budget(p, eps, budget, small_model, test_batch):
    x, y = separated(*test_batch, eps, p)
    assert len(x) >= 150
    model = RowLog(small_model).eval()
    x_adv, used = square_with_queries(model, x, y, LpBall(eps, p=p), queries=budget, generator=gen())
    rows = model.per_example(x, eps, p)
    assert [len(r) for r in rows] == used.tolist()
    assert int(used.max()) <= budget
    broken = predict(small_model, x_adv) != y
    assert (used[~broken] == budget).all()  # a point still robust used its whole budget, exactly
    assert 0 < int(broken.sum()) < len(x)
    for i, r in enumerate(rows):  # the first query is the clean point; no query after the one that broke it
        assert torch.equal(r[0], x[i])
        preds = predict(small_model, torch.stack(r)) != y[i]
        assert not preds[1:-1].any()
        assert bool(preds[-1]) == bool(broken[i])
        assert (r[-1] == x_adv[i]).all() or not broken[i]


def test_no_query_repeats_the_current_point(small_model, test_batch):
    """A sign that would leave the square as it is gets drawn again: each candidate differs from the point it
    was drawn from (replayed from the queried rows with the acceptance rule of the margin loss)."""
    x, y = separated(*test_batch, 0.1)
    model = RowLog(small_model).eval()
    square(model, x, y, LpBall(0.1), queries=100, generator=gen())
    for i, r in enumerate(model.per_example(x, 0.1)):
        if len(r) < 3:
            continue
        margins = margin(small_model(torch.stack(r[1:])).detach(), y[i].expand(len(r) - 1))
        best, best_margin = r[1], margins[0]
        for row, m in zip(r[2:], margins[1:]):
            assert not torch.equal(row, best)
            if m > best_margin:
                best, best_margin = row, m


@pytest.mark.parametrize("threat", [LpBall(0.1), LpBall(0.5, p=2)], ids=["linf", "l2"])
def test_a_misclassified_point_spends_exactly_one_query(threat, small_model, test_batch):
    x, y = test_batch
    wrong = predict(small_model, x) != y
    assert wrong.sum() >= 5
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=50, generator=gen())
    assert (used[wrong] == 1).all()
    assert torch.equal(x_adv[wrong], x[wrong])
    assert (used[~wrong] >= 2).all()


def test_budgets_of_one_and_two_queries(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.1)
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=1, generator=gen())
    assert torch.equal(x_adv, x) and (used == 1).all()
    # two queries: the clean point and the vertical stripes of the initialization, x + eps * (+-1 per column)
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=2, generator=gen())
    right = predict(small_model, x) == y
    assert (used[right] == 2).all() and (used[~right] == 1).all()
    lo, hi = threat.box(x)
    up = x_adv == hi
    assert ((up | (x_adv == lo)) | ~right.view(-1, 1, 1, 1)).all()
    up, movable = up[right], (hi > lo)[right]
    column = up.any(2, keepdim=True)  # a stripe: every movable pixel of a column on the same side
    assert ((up == column) | ~movable).all()


def test_l2_initialization_is_the_grid_of_squares(small_model, test_batch):
    """On 8 x 8 images the tiles are 8 // 5 = 1 pixel wide, from (8 - 5) // 2 = 1: +-1 on rows and columns 1-7
    (as in the reference code), scaled to ||delta||_2 = eps, so +-eps / 7 wherever the box does not clip."""
    x, y = test_batch
    threat = LpBall(0.5, p=2)
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=2, generator=gen())
    right = predict(small_model, x) == y
    assert (used[right] == 2).all() and (used[~right] == 1).all()
    delta = (x_adv - x)[right]
    assert (delta[:, :, 0] == 0).all() and (delta[:, :, :, 0] == 0).all()
    inside = (x_adv[right] > 0) & (x_adv[right] < 1)
    inside[:, :, 0], inside[:, :, :, 0] = False, False
    assert torch.allclose(delta[inside].abs(), torch.full_like(delta[inside], 0.5 / 7), atol=1e-6)
    assert int(inside.sum()) > 1000 and (delta[inside] > 0).any() and (delta[inside] < 0).any()
    assert threat.contains(x_adv, x).all()


def test_l2_updates_keep_the_norm_at_eps_without_a_box(small_model, test_batch):
    """Algorithm 3 moves mass between the two windows (and adds what the box left unused): without a box every
    point queried after the clean one lies on the sphere ||x_q - x||_2 = eps."""
    x, y = separated(*test_batch, 0.5, 2.0)
    threat = LpBall(0.5, p=2, lower=None, upper=None)
    model = RowLog(small_model).eval()
    x_adv, used = square_with_queries(model, x, y, threat, queries=40, generator=gen())
    rows = model.per_example(x, 0.5, 2.0)
    norms = torch.cat([(torch.stack(r[1:]) - x[i]).flatten(1).norm(dim=1) for i, r in enumerate(rows) if len(r) > 1])
    assert len(norms) > 1000
    assert torch.allclose(norms, torch.full_like(norms, 0.5), rtol=1e-5)
    # with the [0, 1] box the norm is eps where nothing is clipped, and never more
    clipped = square(small_model, x, y, LpBall(0.5, p=2), queries=40, generator=gen())
    assert (clipped - x).flatten(1).norm(dim=1).max() <= 0.5 * (1 + 1e-6)


# -- strength ----------------------------------------------------------------------------------------------------


def test_breaks_about_as_many_points_as_pgd_20(small_model, test_batch):
    """Measured on this fixture (178 of 200 points correct), eps = 0.1: PGD-20 breaks 105; Square with 1000
    queries breaks 106, 104, 103 for seeds 0, 1, 2 (the two agree on about 102 points; median 55 queries on a
    broken point). The bound asks for 85% of PGD's count, well under the 98% worst case seen."""
    x, y = test_batch
    threat = LpBall(0.1)
    right = predict(small_model, x) == y
    by_pgd = (predict(small_model, pgd(small_model, x, y, threat, steps=20, generator=gen())) != y) & right
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=1000, generator=gen())
    by_square = (predict(small_model, x_adv) != y) & right
    assert int(by_square.sum()) >= 0.85 * int(by_pgd.sum()) > 0
    assert threat.contains(x_adv, x).all()
    assert int(used.max()) <= 1000


def test_l2_breaks_a_share_of_points_comparable_to_pgd_20(small_model, test_batch):
    """Measured on this fixture (178 of 200 points correct), l_2 eps = 0.5: PGD-20 breaks 90, 93, 93 for seeds
    0, 1, 2; Square with 1000 queries breaks 71, 70, 70 (76-79% of PGD; each time a subset of PGD's; median 35-38
    queries on a broken point). The reference code's l_2 Square (torchattacks 3.5.1, AutoAttack's port) breaks
    50, 51, 57 here: on 8 x 8 images its windows never touch the last row and column. The bound asks for 65% of
    PGD's count, under the 75% worst case seen."""
    x, y = test_batch
    threat = LpBall(0.5, p=2)
    right = predict(small_model, x) == y
    by_pgd = (predict(small_model, pgd(small_model, x, y, threat, steps=20, generator=gen())) != y) & right
    x_adv, used = square_with_queries(small_model, x, y, threat, queries=1000, generator=gen())
    by_square = (predict(small_model, x_adv) != y) & right
    assert int(by_square.sum()) >= 0.65 * int(by_pgd.sum()) > 0
    assert threat.contains(x_adv, x).all()
    assert int(used.max()) <= 1000


def test_targeted_reaches_targets(small_model, test_batch):
    x, y = test_batch
    y_target = (y + 1) % 10
    x_adv, used = square_with_queries(small_model, x, y, LpBall(0.3), queries=300, loss="ce", y_target=y_target,
                                      generator=gen())
    hit = predict(small_model, x_adv) == y_target
    assert hit.float().mean() > 0.5
    assert (used[~hit] == 300).all() and int(used.max()) <= 300


# -- side effects and determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threat", [LpBall(0.1), LpBall(0.5, p=2)], ids=["linf", "l2"])
def test_deterministic_for_a_fixed_generator(threat, small_model, test_batch):
    x, y = test_batch
    a = square_with_queries(small_model, x, y, threat, queries=100, generator=gen(5))
    b = square_with_queries(small_model, x, y, threat, queries=100, generator=gen(5))
    c = square_with_queries(small_model, x, y, threat, queries=100, generator=gen(6))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(square(small_model, x, y, threat, queries=100), square(small_model, x, y, threat,
                                                                                queries=100, generator=gen(0)))


def test_inputs_model_mode_and_global_rng_untouched(test_batch):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    model.train()
    model[3].eval()  # mixed modes come back as they were
    x, y = test_batch
    x0, y0 = x.clone(), y.clone()
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match="training mode"):
        square(model, x, y, LpBall(0.1), queries=30, generator=gen())
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # Dropout ran in eval mode; no global draws


def test_eps_zero_spends_no_query(small_model, test_batch):
    x, y = test_batch
    model = RowLog(small_model).eval()
    x_adv, used = square_with_queries(model, x, y, LpBall(0.0), generator=gen())
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()
    assert (used == 0).all() and model.rows == []


# -- arguments and the configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"queries": 0}, ValueError, "queries must be >= 1, got 0"),
        ({"queries": 2.5}, TypeError, "queries must be an int"),
        ({"p_init": 0}, ValueError, "p_init must be finite and > 0, got 0"),
        ({"p_init": 1.5}, ValueError, r"p_init must be in \(0, 1\], got 1.5"),
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"loss": "dlr-targeted"}, ValueError, "needs y_target"),
    ],
)
def test_invalid_arguments_are_named(kwargs, error, match, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(error, match=match):
        square(small_model, x, y, LpBall(0.1), **kwargs)


def test_non_images_are_refused(small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) with H, W >= 2, got \(200, 64\)"):
        square(small_model, x.flatten(1), y, LpBall(0.1))


def test_config_to_dict_and_call(small_model, test_batch):
    threat = LpBall(0.1)
    attack = build_attack("square", threat, queries=300)
    assert attack == Square(threat, queries=300)
    assert attack.to_dict() == {
        "attack": "square", "eps": 0.1, "p": "inf", "lower": 0.0, "upper": 1.0, "queries": 300, "p_init": 0.8,
        "loss": "margin", "p_halvings_per_10000": [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000],
        "init": "vertical stripes",
    }  # fmt: skip
    x, y = test_batch
    assert torch.equal(attack(small_model, x, y, generator=gen(1)),
                       square(small_model, x, y, threat, queries=300, generator=gen(1)))
    with pytest.raises(ValueError, match="p_init"):
        Square(threat, p_init=2.0)
    l2 = Square(LpBall(0.5, p=2), queries=300)
    assert l2.to_dict()["p"] == 2.0 and l2.to_dict()["init"] == "pseudo-gaussian squares"
    assert torch.equal(l2(small_model, x, y, generator=gen(1)),
                       square(small_model, x, y, LpBall(0.5, p=2), queries=300, generator=gen(1)))
