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
from trustlab.attacks import clean_accuracy


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


@pytest.mark.parametrize("bad, match", [
    (dict(defense="pgd2"), r"unknown defense 'pgd2'; choose one of \['none', 'fgsm', 'fgsm-rs', 'pgd', 'trades'"),
    (dict(eps=-0.1), "eps must be finite and >= 0, got -0.1"),
    (dict(eps=math.nan), "eps must be finite and >= 0, got nan"),
    (dict(lr=0), "lr must be finite and > 0, got 0"),
    (dict(epochs=0), "epochs must be >= 1, got 0"),
    (dict(batch_size=0), "batch_size must be >= 1, got 0"),
    (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
    (dict(schedule="warm"), "unknown schedule 'warm'"),
    (dict(p=1), "p must be inf or 2"),
    (dict(defense="fgsm", eps=0.0), "defense 'fgsm' needs eps > 0, got eps=0"),
    (dict(subset=0), "subset must be >= 1, got 0"),
    (dict(device="tpu"), r"device must be one of \['auto', 'cpu', 'cuda'\] \(or cuda:N\), got 'tpu'"),
    (dict(keep_best=True), "keep_best selects by a validation metric, which defense 'none' does not measure"),
])
def test_inp01_bad_train_config_raises_valueerror(bad, match):
    with pytest.raises(ValueError, match=match):
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
        config = TrainConfig.from_dict(dict(dataset="digits", model="cnn-small", defense=defense, eps=eps, epochs=10,
                                            batch_size=50, seed=0, **({"pgd_steps": 5} if defense == "pgd" else {})))
        summary = train_run(config, run, progress=False)
        # adversarially trained runs carry the per-epoch PGD check (catastrophic-overfitting guard), others not
        assert all(("val_pgd_acc" in row) == (defense != "none") for row in summary["history"])
        from trustlab.checkpoint import latest_checkpoint, load_checkpoint

        model = load_checkpoint(latest_checkpoint(run)).model
        x_adv = pgd(model, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
        acc[defense] = clean_accuracy(model, x_adv, y)
    assert acc["pgd"] >= acc["none"] + 0.10, acc


@pytest.mark.parametrize("name", ["fgsm", "fgsm-rs", "pgd", "trades"])
def test_at01_training_batches_stay_in_threat_set(name):
    """AT-01: every adversarial batch a defense trains on lies in the eps-ball and the box, and is made with the
    model in eval mode (the model's forward passes are spied on)."""
    from trustlab.training import build_defense

    splits = make_splits("digits", seed=0, subset=200)
    threat = LpBall(0.2)
    model = build_model("mlp", in_shape=(1, 8, 8), num_classes=10).train()
    x, y = splits.train
    seen = []
    model.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].detach(), m.training)))
    build_defense(name).objective(threat)(model, x, y, generator=torch.Generator().manual_seed(0))
    attacked = [inp for inp, training in seen if not torch.equal(inp, x)]
    assert attacked, "the defense trained on no perturbed input"
    assert all(bool(threat.contains(inp, x).all()) for inp in attacked)
    update = 2 if name == "trades" else 1  # the loss's own forward passes (TRADES: on x and on x_adv)
    assert [training for _, training in seen] == [False] * (len(seen) - update) + [True] * update
    assert model.training  # the mode is restored for the update


@pytest.mark.parametrize("defense", ["fgsm-rs", "pgd"])
def test_warmup_scales_the_inner_step_with_eps(tmp_path, monkeypatch, defense):
    """A given inner step is the step at full eps; during the eps warm-up it shrinks with eps, so step / eps stays
    what the recipe chose (a fixed 0.3 step at eps 0.075 would make FGSM-RS an FGSM to the ball's corners)."""
    from trustlab.training import Objective, build_defense

    calls = []

    def spy(self, model, x, y, *, generator):
        calls.append((self.threat.eps, self.defense.step_size))
        return self.defense.loss(model, x, y, threat=self.threat, generator=generator)

    monkeypatch.setattr(Objective, "__call__", spy)
    options = {"steps": 2} if defense == "pgd" else {}
    train_run(TrainConfig(dataset="digits", model="mlp", defense=build_defense(defense, step_size=0.25, **options),
                          eps=0.2, eps_warmup_epochs=4, epochs=5, subset=64, batch_size=32), tmp_path / "r",
              progress=False)
    epochs = sorted({(round(e, 6), step) for e, step in calls})
    assert [e for e, _ in epochs] == [0.05, 0.1, 0.15, 0.2]  # eps ramps over 4 epochs, then stays
    assert all(math.isclose(step / eps, 1.25) for eps, step in epochs)
