"""ERM and adversarial training: schedules, optimizers, the Danskin step, and robustness gained (AT-02)."""

from __future__ import annotations

import math

import pytest
import torch

from trustlab.attacks import pgd
from trustlab.data import make_splits
from trustlab.models import build_model
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, build_optimizer, build_scheduler, train_run
from trustlab.training.loop import accuracy


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "cyclic", "one-cycle"])
def test_schedules_are_bounded_and_end_low(name):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer("momentum", [p], lr=0.1)
    sched = build_scheduler(name, opt, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 <= lr <= 0.1 + 1e-12 for lr in lrs)
    if name != "constant":
        assert lrs[-1] < 0.5 * max(lrs)
    if name in ("cyclic", "one-cycle"):
        assert lrs[0] < max(lrs) and lrs.index(max(lrs)) in range(20, 45)


@pytest.mark.parametrize("bad", [dict(defense="pgd2"), dict(eps=-0.1), dict(eps=math.nan), dict(lr=0),
                                 dict(epochs=0), dict(batch_size=0), dict(optimizer="lbfgs"),
                                 dict(schedule="warm"), dict(p=1), dict(defense="fgsm", eps=0.0),
                                 dict(subset=0)])
def test_inp01_bad_train_config_raises_valueerror(bad):
    with pytest.raises((ValueError, TypeError)):
        TrainConfig(**bad)


def test_inp19_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys"):
        TrainConfig.from_dict({"model": "cnn-small", "_target_": "os.system"})


def test_sec09_config_cannot_name_code(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        train_run(TrainConfig(dataset="digits", model="os.system", epochs=1, subset=50), tmp_path / "r", progress=False)


def test_training_reports_accuracies_and_gap(tmp_path):
    s = train_run(TrainConfig(dataset="digits", model="mlp", epochs=3, batch_size=32, lr=3e-3, seed=1),
                  tmp_path / "r", progress=False)
    h = s["history"]
    assert len(h) == 3 and all({"train_clean_acc", "val_acc", "test_acc", "generalization_gap"} <= row.keys() for row in h)
    assert s["test_acc"] > 0.9
    assert h[-1]["generalization_gap"] == pytest.approx(h[-1]["train_clean_acc"] - h[-1]["test_acc"])


def test_at02_pgd_training_raises_pgd_accuracy(tmp_path):
    """AT-02 on digits: PGD-AT gains >= 10 points of PGD accuracy at the training eps over standard training."""
    eps = 0.15
    splits = make_splits("digits", seed=0)
    x, y = splits.test
    threat = LpBall(eps)
    acc = {}
    for defense in ("none", "pgd"):
        run = tmp_path / defense
        summary = train_run(TrainConfig(dataset="digits", model="cnn-small", defense=defense, eps=eps, epochs=10,
                                        batch_size=50, pgd_steps=5, seed=0), run, progress=False)
        # adversarially trained runs carry the per-epoch PGD check (catastrophic-overfitting guard), others not
        assert all(("val_pgd_acc" in row) == (defense != "none") for row in summary["history"])
        from trustlab.checkpoint import latest_checkpoint, load_checkpoint

        model = load_checkpoint(latest_checkpoint(run)).model
        x_adv = pgd(model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
        acc[defense] = accuracy(model, x_adv, y)
    assert acc["pgd"] >= acc["none"] + 0.10, acc


def test_at01_training_batches_stay_in_threat_set(monkeypatch):
    """AT-01: every adversarial batch used for an update lies in the eps-ball and the box."""
    from trustlab.training import defenses

    splits = make_splits("digits", seed=0, subset=200)
    threat = LpBall(0.2)
    seen = []
    for name in ("fgsm", "fgsm-rs", "pgd"):
        inner = defenses.make_inner_max(name, threat, pgd_steps=3)
        model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10).eval()
        x, y = splits.train
        x_adv = inner(model, x, y, torch.Generator().manual_seed(0))
        seen.append(bool(threat.contains(x_adv, x).all()))
    assert all(seen)


@pytest.mark.parametrize("defense", ["fgsm-rs", "pgd"])
def test_warmup_scales_the_inner_step_with_eps(tmp_path, monkeypatch, defense):
    """A given inner step is the step at full eps; during the eps warm-up it shrinks with eps, so step / eps stays
    what the recipe chose (a fixed 0.3 step at eps 0.075 would make FGSM-RS an FGSM to the ball's corners)."""
    from trustlab.training import defenses, run

    calls = []

    def spy(name, threat, **kwargs):
        calls.append((threat.eps, kwargs["pgd_step_size"]))
        return defenses.make_inner_max(name, threat, **kwargs)

    monkeypatch.setattr(run, "make_inner_max", spy)
    train_run(TrainConfig(dataset="digits", model="mlp", defense=defense, eps=0.2, pgd_step_size=0.25, pgd_steps=2,
                          eps_warmup_epochs=4, epochs=5, subset=64, batch_size=32), tmp_path / "r", progress=False)
    assert [round(e, 6) for e, _ in calls] == [0.05, 0.1, 0.15, 0.2, 0.2]
    assert all(math.isclose(step / eps, 1.25) for eps, step in calls)
