"""Poison Frogs end to end (Shafahi et al. 2018, Section 5) on the 8x8 digits: the poisoned training set holds
exactly K clean-label poisons at recorded indices, the control holds the same bases unperturbed, INP-17 errors
name the bad value, and `trustlab poison frogs --end-to-end` writes one record per target that the report reads."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from trustlab.cli.main import main
from trustlab.data import load_dataset
from trustlab.evaluation.frogs_end_to_end import frogs_end_to_end_run
from trustlab.poisoning.feature_collision import FeatureCollisionConfig, end_to_end_sets, watermark
from trustlab.runs import read_records


def _phi() -> nn.Module:
    torch.manual_seed(0)  # test fixture weights only; the code under test takes no randomness
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())


def _digits(k: int):
    x, y = load_dataset("digits", "train")
    bases = x[y == 8][:k]
    target = x[y == 3][0]
    return (x[:30], y[:30]), target, bases


def test_end_to_end_sets_hold_k_poisons_with_the_base_label_and_their_indices():
    (x, y), target, bases = _digits(4)
    cfg = FeatureCollisionConfig(step_size=0.01, steps=20, opacity=0.3)
    sets = end_to_end_sets(_phi(), (x, y), target, bases, 8, cfg, info={"target_idx": 7, "base_idx": [1, 2, 3, 4]})
    p, c = sets.poisoned, sets.control
    n = len(x)
    assert p.added.tolist() == [n, n + 1, n + 2, n + 3] and p.replaced.tolist() == []
    assert len(p.x) == n + 4 and p.y[n:].tolist() == [8] * 4
    torch.testing.assert_close(p.x[:n], x, rtol=0, atol=0)  # the clean part is untouched
    torch.testing.assert_close(p.y[:n], y, rtol=0, atol=0)
    torch.testing.assert_close(p.x[n:], sets.collision.x_poison, rtol=0, atol=0)
    assert p.info == {"target_idx": 7, "base_idx": [1, 2, 3, 4], "poisons": 4, "opacity": 0.3, "control": False}
    # the control: same indices and labels, the watermarked bases without any collision step
    assert c.added.tolist() == p.added.tolist() and c.y.tolist() == p.y.tolist() and c.info["control"] is True
    torch.testing.assert_close(c.x[n:], watermark(bases, target.expand_as(bases), 0.3), rtol=0, atol=0)
    assert float((p.x[n:] - c.x[n:]).abs().amax()) > 1e-3  # the collision moved the poisons off their start
    # every poison collides with the same target: it is nearer the target in feature space than its start
    phi = _phi()
    with torch.no_grad():
        ft = phi(target[None])
        d_poison = (phi(p.x[n:]) - ft).norm(dim=1)
        d_start = (phi(c.x[n:]) - ft).norm(dim=1)
    assert torch.all(d_poison < d_start)


def test_end_to_end_control_without_watermark_is_the_bases_themselves():
    (x, y), target, bases = _digits(2)
    sets = end_to_end_sets(_phi(), (x, y), target[None], bases, 8, FeatureCollisionConfig(steps=2))
    torch.testing.assert_close(sets.control.x[len(x):], bases, rtol=0, atol=0)


def test_inp17_end_to_end_inputs_name_the_value(tmp_path):
    (x, y), target, bases = _digits(2)
    with pytest.raises(ValueError, match=r"need K >= 1 bases"):
        end_to_end_sets(_phi(), (x, y), target, bases[:0], 8, FeatureCollisionConfig(steps=1))
    with pytest.raises(ValueError, match=r"target \(1, 4, 4\) does not match"):
        end_to_end_sets(_phi(), (x, y), target[:, :4, :4], bases, 8, FeatureCollisionConfig(steps=1))
    for opacity in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"opacity must lie in \[0, 1\), got {opacity}"):
            FeatureCollisionConfig(opacity=opacity)
    for k in (0, -3):
        with pytest.raises(ValueError, match=rf"poisons must be an int >= 1, got {k}"):
            frogs_end_to_end_run(tmp_path, target_class=3, base_class=8, dataset="digits", poisons=k)
    with pytest.raises(ValueError, match="targets must be an int >= 1, got 0"):
        frogs_end_to_end_run(tmp_path, target_class=3, base_class=8, dataset="digits", targets=0)
    with pytest.raises(ValueError, match="needs a target class and a base class, got 3 and None"):
        frogs_end_to_end_run(tmp_path, target_class=3, base_class=None, dataset="digits")


def test_inp17_end_to_end_cli_errors(tmp_path, capsys):
    assert main(["poison", "frogs", str(tmp_path), "--end-to-end", "--target-class", "3", "--base-class", "8",
                 "--dataset", "digits", "--poisons", "0"]) != 0
    assert "poisons must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["poison", "frogs", str(tmp_path), "--end-to-end", "--target-class", "3", "--base-class", "8",
                 "--dataset", "digits", "--opacity", "1"]) != 0
    assert "opacity must lie in [0, 1), got 1.0" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_cli_writes_one_record_per_target_and_the_report_reads_them(tmp_path):
    run = tmp_path / "phi"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--subset", "400",
                 "--batch-size", "50", "--out", str(run)]) == 0
    assert main(["--quiet", "poison", "frogs", str(run), "--end-to-end", "--dataset", "digits", "--target-class", "3",
                 "--base-class", "8", "--pairs", "2", "--poisons", "3", "--opacity", "0.3", "--steps", "10",
                 "--step-size", "0.01", "--train-size", "100", "--eval-size", "100", "--finetune-epochs", "1"]) == 0
    (folder,) = (run / "poisoning").iterdir()
    assert folder.name.startswith("frogs-e2e-")
    rows = read_records(folder / "records.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert config["action"] == "frogs-end-to-end" and config["poisons"] == 3 and config["finetune"]["epochs"] == 1
    assert len(rows) == 2 and all(r["y"] == 3 and r["base_class"] == 8 for r in rows)
    assert all(len(r["base_idx"]) == 3 and len(set(r["base_idx"])) == 3 for r in rows)
    assert all(r["success"] == (r["poisoned_pred"] == 8) for r in rows)
    assert all(r["control_success"] == (r["control_pred"] == 8) for r in rows)
    assert summary["success_rate"] == sum(r["success"] for r in rows) / 2
    poisons = load_file(folder / "poisons.safetensors")
    assert poisons["x_poison"].shape[0] == 6 and poisons["y_poison"].tolist() == [8] * 6
    delta = abs(poisons["x_poison"] - poisons["base"]).reshape(2, 3, -1).max(-1)
    assert delta.max(1).tolist() == pytest.approx([r["delta_linf_max"] for r in rows], abs=1e-6)
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Poison Frogs end to end" in md and "control success" in md and "n train" in md
