"""The ``noise`` defense: Gaussian noise augmentation at the smoothing sigma, checked on the smoothed classifier."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from trustlab.threat import LpBall
from trustlab.training import TrainConfig, build_defense, train_run
from trustlab.training.defenses.base import split_prefixed
from trustlab.training.defenses.noise import SMOOTHED_METRIC, NoiseAugmentation

TINY = dict(dataset="digits", model="mlp", epochs=2, subset=120, batch_size=40, seed=0)


def test_loss_is_cross_entropy_on_x_plus_sigma_noise_from_the_generator(small_model, test_batch):
    x, y = test_batch
    defense = build_defense("noise", sigma=0.5)
    loss, logits = defense.loss(small_model, x, y, threat=LpBall(0.0, 2.0), generator=torch.Generator().manual_seed(3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    expected = small_model(x + 0.5 * noise)
    assert torch.allclose(logits, expected) and torch.allclose(loss, F.cross_entropy(expected, y))


def test_prefixed_options_and_errors():
    plain, by = split_prefixed({"noise_sigma": 0.25, "noise_check_n": 50, "epochs": 3})
    assert plain == {"epochs": 3} and by == {"noise": {"sigma": 0.25, "check_n": 50}}
    for bad, match in [({"sigma": 0.0}, "sigma"), ({"check_n": 0}, "check_n"), ({"check_alpha": 1.0}, "alpha")]:
        with pytest.raises((ValueError, TypeError), match=match):
            NoiseAugmentation(**bad)


def test_validate_measures_the_smoothed_classifier(small_model, test_batch):
    x, y = test_batch
    out = NoiseAugmentation(sigma=0.1, check_n=50).validate(small_model, x[:40], y[:40], threat=LpBall(0.0, 2.0),
                                                            generator=torch.Generator().manual_seed(0), batch_size=64)
    assert set(out) == {SMOOTHED_METRIC, "val_smoothed_abstain", "val_noisy_acc"}
    assert 0 <= out[SMOOTHED_METRIC] <= 1 - out["val_smoothed_abstain"] + 1e-12


def test_noise_training_runs_without_eps_and_selects_on_the_smoothed_accuracy(tmp_path):
    config = TrainConfig.from_dict({**TINY, "defense": "noise", "noise_sigma": 0.25, "noise_check_n": 20})
    summary = train_run(config, tmp_path / "r", progress=False)
    assert all(SMOOTHED_METRIC in row for row in summary["history"])
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["defense"] == {"name": "noise", "sigma": 0.25, "check_n": 20, "check_alpha": 0.001}
