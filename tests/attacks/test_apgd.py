"""APGD and APGD-T (Croce & Hein 2020): the checkpoint schedule, the DLR losses, step halving, strength against
PGD, and the side-effect rules (no ``backward``, mode restored, inputs and global RNG untouched)."""

from __future__ import annotations

import copy
import importlib
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import (
    APGD,
    APGDT,
    apgd,
    apgd_targeted,
    build_attack,
    checkpoints,
    dlr,
    dlr_targeted,
    objective,
    pgd,
    predict,
)

apgd_module = importlib.import_module("trustlab.attacks.apgd")  # the package's `apgd` attribute is the function


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(model, x_adv) == y).float().mean().item()


# -- the checkpoint schedule (Sec. 3.2) -----------------------------------------------------------------------


def paper_checkpoints(n_iter: int) -> list[int]:
    """``w_j = ceil(p_j * N_iter)`` with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    for every p_j <= 1, written out again from the paper in hundredths."""
    p = [0, 22]  # hundredths
    while p[-1] + max(p[-1] - p[-2] - 3, 6) <= 100:
        p.append(p[-1] + max(p[-1] - p[-2] - 3, 6))
    return sorted({math.ceil(Fraction(p_j * n_iter, 100)) for p_j in p})


def test_checkpoints_follow_the_papers_formula():
    # p_j = 0, .22, .41, .57, .70, .80, .87, .93, .99 (gaps .22, .19, .16, .13, .10, .07, then the floor .06)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99] == paper_checkpoints(100)
    assert checkpoints(1000) == [0, 220, 410, 570, 700, 800, 870, 930, 990]
    for n in (0, 1, 2, 5, 10, 20, 37, 50, 250):
        got = checkpoints(n)
        assert got == paper_checkpoints(n), n
        assert got[0] == 0 and all(b > a for a, b in zip(got, got[1:])) and got[-1] <= n
    with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
        checkpoints(-1)


# -- the DLR losses (eqs. 6 and 7) ----------------------------------------------------------------------------


Z = torch.tensor([[2.0, 0.5, 1.0, -1.0], [0.0, 3.0, -1.0, 1.0]])
Y = torch.tensor([0, 0])


def test_dlr_by_hand():
    # row 0: z_y = 2, max other = 1, sorted 2 > 1 > 0.5 > -1: -(2 - 1) / (2 - 0.5) = -2/3 (correct, with a margin)
    # row 1: z_y = 0, max other = 3, sorted 3 > 1 > 0 > -1: -(0 - 3) / (3 - 0) = 1 (misclassified)
    assert torch.allclose(dlr(Z, Y), torch.tensor([-2 / 3, 1.0]))
    # targeted, t = (2, 3): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    # row 0: -(2 - 1) / (2 - (0.5 - 1) / 2) = -1 / 2.25;  row 1: -(0 - 1) / (3 - (0 - 1) / 2) = 1 / 3.5
    t = torch.tensor([2, 3])
    assert torch.allclose(dlr_targeted(Z, Y, t), torch.tensor([-1 / 2.25, 1 / 3.5]))
    assert torch.equal(objective(Z, Y, y_target=t, loss="dlr-targeted"), dlr_targeted(Z, Y, t))
    assert torch.equal(objective(Z, Y, y_target=t, loss="dlr"), -dlr(Z, t))


def test_dlr_is_invariant_to_shift_and_positive_scale():
    g = gen(5)
    z = torch.randn(50, 10, generator=g, dtype=torch.float64)
    y, t = torch.randint(0, 10, (50,), generator=g), torch.randint(0, 10, (50,), generator=g)
    for a, b in ((3.0, 0.0), (0.01, 0.0), (1.0, 100.0), (7.5, -40.0)):  # exact up to the 1e-12 guard of the ratio
        assert torch.allclose(dlr(a * z + b, y), dlr(z, y), rtol=1e-6, atol=0)
        assert torch.allclose(dlr_targeted(a * z + b, y, t), dlr_targeted(z, y, t), rtol=1e-6, atol=0)
    assert ((dlr(z, y) > 0) == (z.argmax(1) != y)).all()  # positive exactly when misclassified, like the margin


def test_dlr_needs_enough_classes(linear_binary):
    with pytest.raises(ValueError, match=r"DLR loss needs K >= 3 classes .*got K=2"):
        dlr(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targeted DLR loss needs K >= 4 classes .*got K=3"):
        dlr_targeted(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    model, x, y = linear_binary  # 2 logits
    with pytest.raises(ValueError, match="K=2"):
        apgd(model, x, y, LpBall(0.1), steps=3, loss="dlr")


def test_targeted_dlr_needs_a_target_and_is_refused_before_any_forward(test_batch):
    x, y = test_batch
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(ValueError, match="loss 'dlr-targeted' needs y_target"):
        apgd(model, x, y, LpBall(0.1), loss="dlr-targeted")
    with pytest.raises(ValueError, match="rho must be in \\(0, 1\\], got 1.5"):
        apgd(model, x, y, LpBall(0.1), rho=1.5)
    with pytest.raises(ValueError, match="rho must be finite and > 0, got 0"):
        APGD(LpBall(0.1), rho=0)
    with pytest.raises(ValueError, match="n_target_classes must be >= 1, got 0"):
        apgd_targeted(model, x, y, LpBall(0.1), n_target_classes=0)
    assert calls == []
    with pytest.raises(ValueError, match="loss 'dlr-targeted' needs y_target"):
        objective(Z, Y, loss="dlr-targeted")


def test_apgd_t_needs_enough_classes_and_picks_its_own_targets(small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="n_target_classes must be <= K - 1 = 9 for K=10 classes, got 10"):
        apgd_targeted(small_model, x, y, LpBall(0.1), steps=2, n_target_classes=10)
    with pytest.raises(ValueError, match="y_target must be None"):
        APGDT(LpBall(0.1), steps=2)(small_model, x, y, y_target=(y + 1) % 10)


# -- the step size: halving at checkpoints ----------------------------------------------------------------------


def test_halving_conditions_by_hand():
    f = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [2.0, 0.0, 1.0], [3.0, 0.0, 1.0], [4.0, 0.0, 2.0]])  # (5, 3)
    f_max_then, f_max_now = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([4.0, 0.0, 2.0])
    not_halved = torch.zeros(3, dtype=torch.bool)
    # column 0 rose 4 of 4 times; column 1 never (condition 1); column 2 rose 2 of 4 < 0.75 * 4 (condition 1)
    assert apgd_module._halve_step(f, f_max_then, f_max_now, not_halved, rho=0.75).tolist() == [False, True, True]
    assert apgd_module._halve_step(f, f_max_then, f_max_now, not_halved, rho=0.5).tolist() == [False, True, False]
    # condition 2: f_max unchanged since the last checkpoint and the step not halved there
    flat_max = torch.tensor([4.0, 0.0, 2.0])
    assert apgd_module._halve_step(f, flat_max, f_max_now, not_halved, rho=0.25).tolist() == [True, True, True]
    halved = torch.ones(3, dtype=torch.bool)
    assert apgd_module._halve_step(f, flat_max, f_max_now, halved, rho=0.25).tolist() == [False, True, False]


def test_step_halves_at_the_checkpoints_of_a_real_run(small_model, test_batch, monkeypatch):
    x, y = test_batch
    seen, halve_step = [], apgd_module._halve_step

    def spy(f_since, *args, **kwargs):
        out = halve_step(f_since, *args, **kwargs)
        seen.append((len(f_since) - 1, out))
        return out

    monkeypatch.setattr(apgd_module, "_halve_step", spy)
    apgd(small_model, x, y, LpBall(0.1), steps=100, generator=gen())
    # one decision per checkpoint 22, 41, ..., 93 (99 = N_iter - 1 would only replace the last iterate)
    assert [gap for gap, _ in seen] == [22, 19, 16, 13, 10, 7, 6]
    halved = torch.stack([out for _, out in seen])  # (checkpoints, N)
    assert halved.any(dim=0).float().mean() > 0.5  # most examples halve their step at least once
    assert not halved.all()  # and the decision is per example


def test_forcing_no_halving_changes_the_run(small_model, test_batch, monkeypatch):
    """The halving is live: without it (fixed step 2 eps, no returns to x_max) the iterates differ."""
    x, y = test_batch
    threat = LpBall(0.1, p=2.0)
    with_halving = apgd(small_model, x, y, threat, steps=50, generator=gen())
    monkeypatch.setattr(apgd_module, "_halve_step", lambda f, *a, **k: torch.zeros(f.shape[1], dtype=torch.bool))
    without = apgd(small_model, x, y, threat, steps=50, generator=gen())
    assert not torch.equal(with_halving, without)


# -- strength ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "eps"), [(math.inf, 0.1), (2.0, 0.5)])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_steps(p, eps, small_model, test_batch):
    """Robust accuracy on 200 held-out digits, averaged over 3 seeds: APGD-CE <= PGD-CE + 1 point."""
    x, y = test_batch
    threat, seeds = LpBall(eps, p=p), range(3)
    acc_pgd = sum(robust_accuracy(small_model, pgd(small_model, x, y, threat, steps=20, generator=gen(s)), y)
                  for s in seeds) / 3  # fmt: skip
    acc_apgd = sum(robust_accuracy(small_model, apgd(small_model, x, y, threat, steps=20, generator=gen(s)), y)
                   for s in seeds) / 3  # fmt: skip
    assert acc_apgd <= acc_pgd + 0.01, (acc_apgd, acc_pgd)
    assert acc_apgd < robust_accuracy(small_model, x, y) - 0.2  # the attack does something


def test_more_restarts_keep_every_success(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.06)
    s1 = predict(small_model, apgd(small_model, x, y, threat, steps=10, restarts=1, generator=gen(3))) != y
    s3 = predict(small_model, apgd(small_model, x, y, threat, steps=10, restarts=3, generator=gen(3))) != y
    assert not (s1 & ~s3).any()


def test_apgd_t_breaks_points_and_never_loses_a_clean_error(small_model, test_batch):
    x, y = test_batch
    wrong = predict(small_model, x) != y
    x_adv = apgd_targeted(small_model, x, y, LpBall(0.1), steps=20, n_target_classes=3, generator=gen())
    broken = predict(small_model, x_adv) != y
    assert broken[wrong].all()
    assert broken.float().mean() > wrong.float().mean() + 0.2


def test_targeted_apgd_reaches_its_target(small_model, test_batch):
    x, y = test_batch
    t = (y + 1) % 10
    x_adv = apgd(small_model, x, y, LpBall(0.3), steps=50, loss="dlr-targeted", y_target=t, generator=gen())
    assert (predict(small_model, x_adv) == t).float().mean() > 0.9


# -- side effects -------------------------------------------------------------------------------------------


def test_no_backward_model_mode_and_inputs_untouched(small_model, test_batch, monkeypatch):
    x, y = test_batch
    model = nn.Sequential(*copy.deepcopy(small_model), nn.Dropout(0.5)).train()
    model[0].eval()  # mixed modes come back as they were
    modes = [m.training for m in model.modules()]
    x0, y0, rng = x.clone(), y.clone(), torch.get_rng_state()
    calls = []
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: calls.append(1))
    with pytest.warns(UserWarning, match="training mode"):
        apgd(model, x, y, LpBall(0.1), steps=10, loss="dlr", restarts=2, generator=gen())
    with pytest.warns(UserWarning, match="training mode"):
        apgd_targeted(model, x, y, LpBall(0.1), steps=5, n_target_classes=2)
    assert calls == []
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(x, x0) and torch.equal(y, y0) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


# -- configurations -----------------------------------------------------------------------------------------


def test_configs_build_and_record_every_hyperparameter():
    threat = LpBall(0.3)
    config = build_attack("apgd", threat, steps=100, loss="dlr", restarts=2)
    assert config == APGD(threat, steps=100, loss="dlr", restarts=2)
    assert config.to_dict() == {
        "attack": "apgd", "eps": 0.3, "p": "inf", "lower": 0.0, "upper": 1.0, "steps": 100, "restarts": 2,
        "loss": "dlr", "rho": 0.75, "momentum": 0.75, "initial_step_size": 0.6,
        "checkpoints": [0, 22, 41, 57, 70, 80, 87, 93, 99],
    }  # fmt: skip
    record = build_attack("apgd-t", LpBall(1.0, p=2), steps=10).to_dict()
    assert record["attack"] == "apgd-t" and record["p"] == 2.0 and record["n_target_classes"] == 9
    assert record["loss"] == "dlr-targeted" and record["initial_step_size"] == 2.0
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['step_size'\] for attack 'apgd'"):
        build_attack("apgd", threat, step_size=0.1)
