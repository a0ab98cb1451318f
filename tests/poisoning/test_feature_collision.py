"""Poison Frogs feature collision (Shafahi et al. 2018): forward-backward descent, the proximal closed form, the
transfer-learning attack on digits, seeded pair selection, INP-17 input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.data import load_dataset
from trustlab.poisoning.feature_collision import (
    FeatureCollisionConfig,
    collision_objective,
    feature_collision,
    poisoned_training_set,
    proximal_step,
    scaled_beta,
    select_pairs,
    transfer_attack,
    watermark,
)


def _net(sizes, *, seed: int, act=nn.Tanh) -> nn.Sequential:
    """A small MLP with weights drawn from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g) * (2.0 / a) ** 0.5)
            lin.bias.zero_()
        layers += [lin, act()] if i < len(sizes) - 2 else [lin]
    return nn.Sequential(*layers)


def test_feature_collision_objective_decreases_monotonically_for_a_linear_phi():
    phi = _net([16, 8], seed=0)
    lip = 2 * torch.linalg.matrix_norm(phi[1].weight, ord=2).item() ** 2  # gradient Lipschitz constant
    g = torch.Generator().manual_seed(1)
    target, base = torch.rand(5, 1, 4, 4, generator=g), torch.rand(5, 1, 4, 4, generator=g)
    cfg = FeatureCollisionConfig(beta0=0.5, step_size=0.9 / lip, steps=50)
    res = feature_collision(phi, target, base, cfg)
    obj = res.objective
    assert obj.shape == (51, 5)
    # forward-backward splitting with step <= 1/L never increases the objective (up to float rounding)
    assert torch.all(obj[1:] <= obj[:-1] * (1 + 1e-5) + 1e-6)
    assert torch.all(obj[-1] < 0.9 * obj[0])
    direct = collision_objective(phi, res.x_poison, phi(target).flatten(1).detach(), base, res.beta)
    torch.testing.assert_close(direct.detach(), obj[-1], rtol=1e-5, atol=1e-6)


def test_feature_collision_decreases_objective_for_a_nonlinear_phi_and_keeps_the_box():
    phi = _net([64, 32, 16], seed=0).train()
    g = torch.Generator().manual_seed(2)
    target, base = torch.rand(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g)
    t0, b0 = target.clone(), base.clone()
    res = feature_collision(phi, target, base, FeatureCollisionConfig(beta0=0.25, step_size=0.01, steps=100))
    assert torch.all(res.objective[-1] < res.objective[0])
    assert res.x_poison.min() >= 0 and res.x_poison.max() <= 1
    assert phi.training  # mode restored
    assert torch.equal(target, t0) and torch.equal(base, b0)  # inputs not mutated
    again = feature_collision(phi, target, base, FeatureCollisionConfig(beta0=0.25, step_size=0.01, steps=100))
    assert torch.equal(res.x_poison, again.x_poison)


def test_proximal_step_is_the_closed_form_minimizer():
    g = torch.Generator().manual_seed(0)
    # float64, so the brute-force grid's objective values are not flattened by rounding near the minimum
    x_hat = torch.rand(200, generator=g, dtype=torch.float64) * 1.6 - 0.3  # some coordinates land outside the box
    base = torch.rand(200, generator=g, dtype=torch.float64)
    beta, lam = 3.0, 0.05
    x = proximal_step(x_hat, base, beta=beta, step_size=lam, lower=0.0, upper=1.0)
    # brute force: the 1-D objective on a fine grid of the box, per coordinate
    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)[None, :]
    obj = beta * (grid - base[:, None]) ** 2 + (grid - x_hat[:, None]) ** 2 / (2 * lam)
    torch.testing.assert_close(x, grid[0, obj.argmin(1)], atol=1e-5, rtol=0)
    inside = (x > 0) & (x < 1)
    assert inside.sum() > 100
    stationarity = 2 * beta * (x - base) + (x - x_hat) / lam
    zeros = torch.zeros(int(inside.sum()), dtype=torch.float64)
    torch.testing.assert_close(stationarity[inside], zeros, atol=1e-9, rtol=0)


def test_poisoned_training_set_appends_clean_label_poisons():
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    out = poisoned_training_set(x, y, torch.rand(2, 1, 2, 2), 1, info={"targets": [3, 4]})
    assert torch.equal(out.x[:6], x) and torch.equal(out.y, torch.tensor([0, 1, 2, 0, 1, 2, 1, 1]))
    assert out.added.tolist() == [6, 7] and out.info == {"targets": [3, 4]}
    with pytest.raises(ValueError, match="do not match"):
        poisoned_training_set(x, y, torch.rand(2, 1, 3, 3), 1)


def test_scaled_beta_and_watermark():
    # the paper's setting: 2048 InceptionV3 features, 299x299x3 inputs, beta0 = 0.25
    assert scaled_beta(0.25, 2048, 299 * 299 * 3) == pytest.approx(0.25 * 2048**2 / (299 * 299 * 3) ** 2)
    b, t = torch.zeros(2, 3), torch.ones(2, 3)
    torch.testing.assert_close(watermark(b, t, 0.3), torch.full((2, 3), 0.3))


@pytest.fixture(scope="module")
def digits_phi():
    """A feature extractor pretrained (seeded, full batch) on the digits training split; frozen."""
    torch.set_num_threads(1)
    x, y = load_dataset("digits", "train")
    phi, head = _net([64, 256, 256], seed=0, act=nn.ReLU), _net([256, 10], seed=1)[1]
    phi = nn.Sequential(*phi, nn.ReLU())
    opt = torch.optim.Adam([*phi.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(head(phi(x)), y).backward()
        opt.step()
    return phi.requires_grad_(False)


def test_feature_collision_one_poison_flips_the_target_in_transfer_learning(digits_phi):
    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    gen = torch.Generator().manual_seed(1)
    ti, bi = [], []
    for tc, bc in [(3, 8), (1, 7), (4, 9), (5, 6), (2, 0)]:
        a, b = select_pairs(y_te, y_te, target_class=tc, base_class=bc, n_pairs=2, num_classes=10, generator=gen)
        ti.append(a)
        bi.append(b)
    ti, bi = torch.cat(ti), torch.cat(bi)
    keep = torch.ones(len(y_te), dtype=torch.bool)
    keep[ti] = keep[bi] = False
    cfg = FeatureCollisionConfig(beta0=0.01, step_size=0.001, steps=300)
    r = transfer_attack(digits_phi, (x_tr, y_tr), (x_te[keep], y_te[keep]), targets=(x_te[ti], y_te[ti]),
                        bases=(x_te[bi], y_te[bi]), base_class=y_te[bi], num_classes=10, config=cfg)
    assert torch.all(r.target_pred_clean == y_te[ti])  # the clean model gets every target right
    rate = r.success.float().mean().item()
    assert rate >= 0.6, f"success rate {rate}"  # measured 0.9 (9/10) with these seeds
    assert torch.all(r.clean_accuracy >= r.clean_accuracy_before - 0.02)
    assert torch.all(r.delta_linf <= 1.0) and torch.all(r.delta_l2 > 0)


def test_inp17_feature_collision_inputs():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="target_class must lie in"):
        select_pairs(y, y, target_class=10, base_class=1, n_pairs=1, num_classes=10, generator=gen)
    with pytest.raises(ValueError, match="must differ"):
        select_pairs(y, y, target_class=1, base_class=1, n_pairs=1, num_classes=10, generator=gen)
    with pytest.raises(ValueError, match="need 3 base examples of class 2"):
        select_pairs(torch.ones(5, dtype=torch.int64), y, target_class=1, base_class=2, n_pairs=3, num_classes=10,
                     generator=gen)
    phi = _net([4, 3], seed=0)
    x = torch.rand(2, 1, 2, 2, generator=gen)
    cfg = FeatureCollisionConfig(steps=1)
    common = dict(num_classes=3, config=cfg)
    with pytest.raises(ValueError, match="wrong class"):
        transfer_attack(phi, (x, torch.tensor([0, 1])), (x, torch.tensor([0, 1])), targets=(x, torch.tensor([0, 0])),
                        bases=(x, torch.tensor([1, 2])), base_class=1, **common)
    with pytest.raises(ValueError, match="target class must lie in"):
        transfer_attack(phi, (x, torch.tensor([0, 1])), (x, torch.tensor([0, 1])), targets=(x, torch.tensor([0, 5])),
                        bases=(x, torch.tensor([1, 1])), base_class=1, **common)
    with pytest.raises(ValueError, match="already of the base class"):
        transfer_attack(phi, (x, torch.tensor([0, 1])), (x, torch.tensor([0, 1])), targets=(x, torch.tensor([0, 1])),
                        bases=(x, torch.tensor([1, 1])), base_class=1, **common)
    with pytest.raises(ValueError, match="opacity must lie in"):
        FeatureCollisionConfig(opacity=1.0)
    with pytest.raises(ValueError, match="step_size must be"):
        FeatureCollisionConfig(step_size=0.0)
    with pytest.raises(ValueError, match="same shape"):
        feature_collision(phi, x, x[:1], cfg)
