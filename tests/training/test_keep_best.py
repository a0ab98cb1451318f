"""Early stopping by validation PGD accuracy (``keep_best``): the run ends with the best full-eps epoch's weights."""

from __future__ import annotations

import json

import pytest
import torch

from trustlab.checkpoint import latest_checkpoint, load_checkpoint
from trustlab.training import TrainConfig, train_run
from trustlab.training import run as run_mod

CFG = dict(dataset="digits", model="mlp", defense="fgsm-rs", eps=0.1, epochs=4, eps_warmup_epochs=2, subset=300,
           batch_size=50, lr=3e-3, seed=3, keep_best=True)


def _weights(ckpt_dir):
    return load_checkpoint(ckpt_dir).model.state_dict()


def _rigged_check(scores):
    """A robustness check returning the given validation PGD accuracy per epoch (to know the right answer)."""
    def check(model, splits, threat, config, epoch, device):
        return {"val_pgd_acc": scores[epoch]}
    return check


def test_keep_best_ends_with_the_best_full_eps_epoch(tmp_path, monkeypatch):
    # Epoch 1 (eps ramped to 0.05) scores highest but is not at full eps; among epochs 2-4, epoch 3 is best.
    monkeypatch.setattr(run_mod, "_validate", _rigged_check([0.99, 0.5, 0.8, 0.6]))
    out = tmp_path / "best"
    summary = train_run(TrainConfig(**CFG), out, progress=False)
    assert summary["selected_epoch"] == 3
    final = latest_checkpoint(out)
    assert final.name == "final"
    kept = latest_checkpoint(out / "best")
    assert kept.name == "epoch_0003"
    for k, v in _weights(final).items():
        assert torch.equal(v, _weights(kept)[k])
    last_epoch = _weights(out / "checkpoints" / "epoch_0004")
    assert any(not torch.equal(v, last_epoch[k]) for k, v in _weights(final).items())
    assert summary["val_acc"] == summary["history"][2]["val_acc"]
    # the test records come from the selected weights
    model = load_checkpoint(final).model
    x, y = run_mod.make_splits("digits", seed=3, subset=300).test
    correct = int((model(x).argmax(1) == y).sum())
    assert correct == round(summary["test_acc"] * len(y))


def test_keep_best_survives_a_kill_between_epoch_and_best_commit(tmp_path, monkeypatch):
    """Resume re-saves the best copy when the kill came after the epoch's commit but before the best's."""
    monkeypatch.setattr(run_mod, "_validate", _rigged_check([0.1, 0.9, 0.2, 0.3]))
    out = tmp_path / "r"
    real_update = run_mod._update_best

    def killed_at_epoch_2(out_, model, history, *args):
        if history[-1]["epoch"] == 2:
            raise KeyboardInterrupt  # stands for the kill
        real_update(out_, model, history, *args)

    monkeypatch.setattr(run_mod, "_update_best", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_run(TrainConfig(**CFG), out, progress=False)
    monkeypatch.setattr(run_mod, "_update_best", real_update)
    summary = train_run(TrainConfig(**CFG), out, resume=True, progress=False)
    assert summary["selected_epoch"] == 2
    assert latest_checkpoint(out / "best").name == "epoch_0002"
    history_epochs = [r["epoch"] for r in summary["history"]]
    assert history_epochs == [1, 2, 3, 4]


def test_keep_best_resume_of_a_selected_run_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "_validate", _rigged_check([0.1, 0.4, 0.9, 0.3]))
    out = tmp_path / "r"
    first = train_run(TrainConfig(**CFG), out, progress=False)
    (out / "summary.json").unlink()  # as if killed after the final commit, before the summary
    again = train_run(TrainConfig(**CFG), out, resume=True, progress=False)
    assert again["selected_epoch"] == first["selected_epoch"] == 3
    assert again["test_acc"] == first["test_acc"]


def test_keep_best_on_real_checks_records_the_selection(tmp_path):
    summary = train_run(TrainConfig(**CFG), tmp_path / "r", progress=False)
    full = [r for r in summary["history"] if r["train_eps"] >= 0.1 - 1e-12]
    best = max(full, key=lambda r: (r["val_pgd_acc"], r["epoch"]))
    assert summary["selected_epoch"] == best["epoch"]
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["selected_epoch"] == best["epoch"]


@pytest.mark.parametrize("bad", [dict(keep_best=True, defense="none"), dict(keep_best="yes")])
def test_inp01_keep_best_bad_values_raise(bad):
    with pytest.raises(ValueError, match="keep_best"):
        TrainConfig(**{**CFG, **bad})

