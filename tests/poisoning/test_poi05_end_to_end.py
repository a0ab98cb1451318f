"""POI-05: end to end on the 8x8 digits, 5% dirty-label poison, 3x3 patch: ASR >= 90%, clean-accuracy drop
<= 5 pp vs the clean-trained model, whose ASR is <= 20%. Seeded; slow tier (two training runs)."""

from __future__ import annotations

import pytest

from trustlab.attacks import clean_accuracy
from trustlab.checkpoint import latest_checkpoint, load_checkpoint
from trustlab.data import make_splits
from trustlab.poisoning import BackdoorPoisoning, Trigger, attack_success_rate
from trustlab.training import TrainConfig, train_run


@pytest.mark.slow
def test_poi05_digits_patch_backdoor_end_to_end(tmp_path):
    config = TrainConfig.from_dict({"dataset": "digits", "model": "mlp", "epochs": 10, "seed": 0})
    trigger = Trigger("patch", size=3)
    train_run(config, tmp_path / "poisoned", transform=BackdoorPoisoning(trigger, rate=0.05, target=0),
              progress=False)
    train_run(config, tmp_path / "clean", progress=False)
    x, y = make_splits("digits", seed=0).test
    models = {k: load_checkpoint(latest_checkpoint(tmp_path / k)).model for k in ("poisoned", "clean")}
    asr = {k: attack_success_rate(m, x, y, trigger, target=0) for k, m in models.items()}
    acc = {k: clean_accuracy(m, x, y) for k, m in models.items()}
    assert asr["poisoned"] >= 0.9 and asr["clean"] <= 0.2
    assert acc["clean"] - acc["poisoned"] <= 0.05
