"""Certified training as registered defenses: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020), their
kappa / beta / eps schedules, Shi et al. (2021)'s IBP initialization and warm-up regularizers, and the per-epoch
verified-accuracy check that keep_best selects on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trustlab.certify import certify, margin_bounds
from trustlab.models import build_model
from trustlab.threat import LpBall
from trustlab.training import DEFENSES, Defense, TrainConfig, build_defense, register_defense, train_run
from trustlab.training.defenses.certified import CertifiedDefense, Scheduled, linear_ramp
from trustlab.training.defenses.crown_ibp import CROWNIBPTraining
from trustlab.training.defenses.fast_init import ibp_init_std, ibp_initialize, warmup_regularizer
from trustlab.training.defenses.ibp import IBPTraining
from trustlab.training.run import _defense_at

TINY = dict(dataset="digits", model="cnn-small", subset=200, batch_size=50, eps=0.1, seed=0, lr=0.005)


@pytest.fixture()
def batch(digits_xy):
    x, y = digits_xy
    return x[:40].clone(), y[:40].clone()


def _cnn(seed: int = 0) -> nn.Module:
    return build_model("cnn-small", in_shape=(1, 8, 8), num_classes=10, seed=seed)


@pytest.mark.parametrize("name", ["ibp", "crown-ibp"])
def test_certified_defenses_are_registered_with_their_settings(name):
    defense = build_defense(name)
    assert isinstance(defense, CertifiedDefense) and DEFENSES[name] is type(defense)
    assert defense.selection_metric == "val_verified_acc" and defense.ramp_per_step and defense.adversarial
    config = TrainConfig.from_dict({**TINY, "defense": name, f"{name.replace('-', '_')}_kappa": 0.25})
    assert config.defense.kappa == 0.25 and config.to_dict()["defense"]["name"] == name


@pytest.mark.parametrize("values, match", [
    ({"kappa": 1.5}, r"kappa must lie in \[0, 1\], got 1.5"),
    ({"kappa_start": -0.1}, "kappa_start must be finite and >= 0, got -0.1"),
    ({"fast_tol": 0.0}, "fast_tol must be finite and > 0, got 0.0"),
    ({"fast_init": "yes"}, "fast_init must be true or false, got 'yes'"),
])
def test_bad_certified_training_settings_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        IBPTraining(**values)
    with pytest.raises(ValueError, match=r"beta_start must lie in \[0, 1\], got 2"):
        CROWNIBPTraining(beta_start=2)


def test_kappa_beta_and_regularizer_schedules_follow_the_ramp():
    ibp = IBPTraining()  # Gowal et al.: kappa 1 -> 0.5
    assert [ibp.kappa_at(r) for r in (0.0, 0.5, 1.0)] == [1.0, 0.75, 0.5]
    crown = CROWNIBPTraining()  # Zhang et al.: kappa 1 -> 0, beta 1 -> 0
    assert [crown.kappa_at(r) for r in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert [crown.beta_at(r) for r in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    assert ibp.reg_weight_at(0.0) == 0.0  # no regularizer without fast_init
    fast = IBPTraining(fast_init=True, fast_reg=0.4)  # Shi et al.: lambda_0 (1 - eps_t / eps)
    assert [fast.reg_weight_at(r) for r in (0.0, 0.5, 1.0)] == [0.4, 0.2, 0.0]
    with pytest.raises(ValueError, match=r"ramp must lie in \[0, 1\], got 1.5"):
        ibp.scaled(1.5)
    assert linear_ramp(2.0, 4.0, 0.25) == 2.5
    assert ibp.scaled(0.5) == Scheduled(ibp, 0.5)


def test_eps_ramps_per_batch_for_certified_training_and_per_epoch_for_the_others():
    ibp = TrainConfig.from_dict({**TINY, "defense": "ibp", "eps_warmup_epochs": 4})
    pgd = TrainConfig.from_dict({**TINY, "defense": "pgd", "eps_warmup_epochs": 4})
    threat, defense = _defense_at(ibp, 1, 0.5)  # 1.5 of 4 warm-up epochs done
    assert threat.eps == pytest.approx(0.1 * 1.5 / 4) and defense.ramp == pytest.approx(1.5 / 4)
    assert _defense_at(ibp, 1)[0].eps == pytest.approx(0.05)  # the end of an epoch: the staircase's value
    assert _defense_at(pgd, 1, 0.5)[0].eps == pytest.approx(0.05)  # PGD keeps the per-epoch staircase
    assert _defense_at(ibp, 7, 0.1)[1].ramp == 1.0


def test_the_loop_sees_a_linear_per_batch_ramp(tmp_path):
    seen: list[float] = []

    @register_defense
    @dataclass(frozen=True)
    class Probe(Defense):  # records the eps of every batch
        name = "test-ramp-probe"
        ramp_per_step = True
        selection_metric = None

        def loss(self, model, x, y, *, threat, generator):
            seen.append(threat.eps)
            logits = model(x)
            return F.cross_entropy(logits, y), logits

        def validate(self, model, x, y, *, threat, generator, batch_size):
            return {}

    try:
        config = TrainConfig.from_dict({**TINY, "defense": "test-ramp-probe", "epochs": 3, "eps_warmup_epochs": 2})
        train_run(config, tmp_path / "r", progress=False)
    finally:
        del DEFENSES["test-ramp-probe"]
    per_epoch = len(seen) // 3  # 4 batches of 50
    want = [0.1 * min(1.0, (s + 1) / (2 * per_epoch)) for s in range(3 * per_epoch)]
    assert per_epoch == 4 and seen == pytest.approx(want)


def test_verified_loss_is_the_mix_of_clean_and_bound_cross_entropy(batch):
    x, y = batch
    model, threat = _cnn(), LpBall(0.05)
    model.train()
    loss, logits = IBPTraining(kappa=0.3).loss(model, x, y, threat=threat, generator=torch.Generator())
    with torch.no_grad():
        lower = margin_bounds(model.eval(), x, y, threat, method="ibp")
        want = 0.3 * F.cross_entropy(model(x), y) + 0.7 * F.cross_entropy(-lower, y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.equal(logits.argmax(1) == y, (lower + torch.eye(10)[y] > 0).all(1))  # train_acc is verified acc


@pytest.mark.parametrize("defense, ramp", [(IBPTraining(), 0.5), (CROWNIBPTraining(), 0.5),
                                           (IBPTraining(fast_init=True), 0.3)])
def test_the_loss_gradient_reaches_every_weight(batch, defense, ramp):
    x, y = batch
    model = _cnn()
    model.train()
    loss, _ = defense.scaled(ramp).loss(model, x, y, threat=LpBall(0.1), generator=torch.Generator())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert model.training  # the bounds ran in eval mode, and the loop's train mode is back


def test_crown_ibp_mixes_the_two_bounds_by_beta(batch):
    x, y = batch
    model, threat = _cnn().eval(), LpBall(0.05)
    ibp = margin_bounds(model, x, y, threat, method="ibp")
    tight = margin_bounds(model, x, y, threat, method="crown-ibp")
    crown = CROWNIBPTraining(beta_start=1.0, beta=0.0)
    with torch.no_grad():
        for ramp in (0.0, 0.25, 1.0):
            beta = 1 - ramp
            got = crown.margin_lower(model, x, y, threat, ramp=ramp)
            assert torch.allclose(got, beta * tight + (1 - beta) * ibp, atol=1e-5)


def test_batchnorm_models_train_with_bounds_on_running_statistics(batch):
    """BN: the clean term in train mode updates the running statistics once; the bounds use them (eval mode)."""
    x, y = batch
    torch.manual_seed(0)  # parameter init only
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    model.train()
    loss, _ = IBPTraining().scaled(0.5).loss(model, x, y, threat=LpBall(0.05), generator=torch.Generator())
    assert int(model[2].num_batches_tracked) == 1 and model.training
    (g_weight,) = torch.autograd.grad(loss, [model[2].weight])
    assert g_weight.abs().sum() > 0


@pytest.mark.parametrize("name", ["ibp", "crown-ibp"])
def test_per_epoch_check_is_verified_accuracy_and_keep_best_selects_on_it(tmp_path, name):
    config = TrainConfig.from_dict({**TINY, "defense": name, "epochs": 3, "eps_warmup_epochs": 1, "keep_best": True})
    summary = train_run(config, tmp_path / "r", progress=False)
    rows = summary["history"]
    assert all({"val_verified_acc", "val_pgd_acc"} <= set(row) for row in rows)
    assert all(0 <= r["val_verified_acc"] <= r["val_pgd_acc"] <= r["val_acc"] for r in rows)
    best = max(rows, key=lambda r: (r["val_verified_acc"], r["epoch"]))["epoch"]
    assert summary["selected_epoch"] == best


def test_validate_counts_what_its_bounds_certify(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.02)
    stats = CROWNIBPTraining().validate(small_model, x, y, threat=threat, generator=torch.Generator(), batch_size=64)
    union = torch.zeros(len(x), dtype=torch.bool)
    for method in ("ibp", "crown-ibp"):
        union |= torch.tensor([c.certified for c in certify(small_model, x, y, threat, method=method)])
    assert stats["val_verified_acc"] == pytest.approx(union.float().mean().item())
    assert 0 < stats["val_verified_acc"] <= stats["val_pgd_acc"]


def test_ibp_initialization_draws_sqrt_2pi_over_fan_in_and_keeps_the_last_layer():
    model = build_model("mlp", in_shape=(1, 28, 28), num_classes=10, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = ibp_initialize(model, generator=torch.Generator().manual_seed(3))
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert names == ["1.weight", "3.weight"] and len(layers) == 3
    for layer in layers[:2]:
        fan_in = layer.weight.shape[1]
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.05)
    after = model.state_dict()
    assert torch.equal(after["5.weight"], before["5.weight"])  # the classification layer is left as it was
    assert all(torch.equal(after[k], before[k]) for k in before if k.endswith("bias"))
    again = build_model("mlp", in_shape=(1, 28, 28), num_classes=10, seed=0)
    ibp_initialize(again, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(again.state_dict()[k], after[k]) for k in after)  # seeded, no global RNG
    assert ibp_init_std(4) == pytest.approx(math.sqrt(2 * math.pi) / 4)
    with pytest.raises(ValueError, match="fan_in must be an int >= 1, got 0"):
        ibp_init_std(0)


def test_fast_init_reinitializes_only_with_the_option():
    plain, fast = _cnn(), _cnn()
    IBPTraining().initialize(plain, generator=torch.Generator().manual_seed(0))
    IBPTraining(fast_init=True).initialize(fast, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain[0].weight, _cnn()[0].weight) and not torch.equal(fast[0].weight, plain[0].weight)


def test_warmup_regularizer_is_lower_after_ibp_initialization(batch):
    """Shi et al.'s point: a standard initialization makes interval bounds grow layer by layer (L_tightness high);
    IBP initialization keeps their radius near the input's. The regularizer is differentiable in the weights."""
    x, _ = batch
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10, seed=0).eval()
    standard = warmup_regularizer(model, x, LpBall(0.1))
    (grad,) = torch.autograd.grad(standard, [model[1].weight])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    ibp_initialize(model, generator=torch.Generator().manual_seed(0))
    assert 0 <= warmup_regularizer(model, x, LpBall(0.1)).item() < standard.item() / 10
    with pytest.raises(ValueError, match="tol must be finite and > 0, got -1"):
        warmup_regularizer(model, x, LpBall(0.1), tol=-1)
