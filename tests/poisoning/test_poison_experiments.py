"""``trustlab poison svm|frogs`` on the 8x8 digits: the record sets (one row per attack step / per target-base
pair), the poison images, the INP-17 errors, and the report section read from the records alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

from trustlab.cli.main import main
from trustlab.evaluation.frogs_run import class_pairs
from trustlab.evaluation.svm_poisoning_run import check_pair, poison_points
from trustlab.runs import read_records

SVM = ["poison", "svm", "--dataset", "digits", "--pair", "7,1", "--train-size", "40", "--val-size", "100",
       "--steps", "20"]


def _only(folder: Path, prefix: str) -> Path:
    (found,) = [p for p in (folder / "poisoning").iterdir() if p.name.startswith(prefix)]
    return found


@pytest.fixture(scope="module")
def svm_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("svm") / "exp"
    assert main(["--quiet", *SVM, "--points", "2", "--out", str(out)]) == 0
    return out


def test_svm_records_one_row_per_step_with_baseline_and_poisons(svm_out):
    folder = _only(svm_out, "svm-")
    rows = read_records(folder / "records.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    grad = [r for r in rows if r["method"] == "gradient"]
    assert sorted({r["point"] for r in grad}) == [0, 1] and sum(r["final"] for r in grad) == 2
    assert len(grad) == sum(summary["iterations"]) + 2  # every accepted step and each start
    assert [r["n_poison"] for r in rows if r["method"] == "label_flip"] == [1, 2]
    (clean,) = [r for r in rows if r["method"] == "clean"]
    assert clean["test_error"] == summary["clean_test_error"]
    assert summary["one_point_test_error"] == [r for r in grad if r["final"]][0]["test_error"]
    assert all(r["step"] > 0 or r["moved"] == 0.0 for r in grad)
    assert {r["y"] for r in grad} == {1}  # cloned from 7, labelled 1
    poisons = load_file(folder / "poisons.safetensors")
    assert poisons["x_poison"].shape == poisons["x_start"].shape == (2, 64)
    assert 0.0 <= poisons["x_poison"].min() and poisons["x_poison"].max() <= 1.0
    root = read_records(svm_out / "records.jsonl")
    assert sum(not r["correct"] for r in root) / len(root) == pytest.approx(summary["clean_test_error"])


@pytest.mark.parametrize("args, message", [
    (["--pair", "7,7"], "must differ, got 7 and 7"),
    (["--pair", "7,10"], "class 10 of pair [7, 10] is out of range [0, 10)"),
    (["--rate", "1.5"], "rate must lie in [0, 1], got 1.5"),
    (["--rate", "0.001"], "no poison sample generated: rate 0.001 of 40"),
])
def test_inp17_svm_cli_errors_name_the_value(tmp_path, capsys, args, message):
    assert main(["--quiet", *SVM, *args, "--out", str(tmp_path / "x")]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_inp17_library_checks():
    with pytest.raises(ValueError, match="out of range"):
        check_pair((-1, 3), 10)
    with pytest.raises(ValueError, match="exactly one"):
        poison_points(100)
    assert poison_points(100, rate=0.05) == 5
    with pytest.raises(ValueError, match="target class 12 is out of range"):
        class_pairs(12, 1, 10)
    with pytest.raises(ValueError, match="must differ, got 4 for both"):
        class_pairs(4, 4, 10)


@pytest.fixture(scope="module")
def frogs_run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frogs") / "phi"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "3", "--subset", "400",
                 "--batch-size", "50", "--out", str(out)]) == 0
    assert main(["--quiet", "poison", "frogs", str(out), "--dataset", "digits", "--pairs", "4", "--steps", "30",
                 "--step-size", "0.01", "--train-size", "100", "--eval-size", "100"]) == 0
    return out


def test_frogs_records_one_row_per_pair(frogs_run_dir):
    folder = _only(frogs_run_dir, "frogs-")
    rows = read_records(folder / "records.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    assert len(rows) == 4 and summary["success_rate"] == sum(r["success"] for r in rows) / 4
    assert all(r["success"] == (r["poisoned_pred"] == r["base_class"]) for r in rows)
    assert all(r["y"] != r["base_class"] for r in rows)
    correct = [r for r in rows if r["clean_pred"] == r["y"]]
    assert summary["clean_correct"] == len(correct)
    poisons = load_file(folder / "poisons.safetensors")
    delta = (poisons["x_poison"] - poisons["base"]).reshape(4, -1)
    assert [float(abs(d).max()) for d in delta] == pytest.approx([r["delta_linf"] for r in rows], abs=1e-6)
    assert poisons["y_poison"].tolist() == [r["base_class"] for r in rows]


def test_inp17_frogs_base_from_the_wrong_class():
    from trustlab.poisoning.feature_collision import FeatureCollisionConfig, transfer_attack

    phi = torch.nn.Flatten()
    x = torch.rand(6, 1, 2, 2)
    with pytest.raises(ValueError, match="base 0 is from the wrong class"):
        transfer_attack(phi, (x, torch.tensor([0, 1, 2, 0, 1, 2])), (x, torch.zeros(6, dtype=torch.long)),
                        targets=(x[:1], torch.tensor([0])), bases=(x[1:2], torch.tensor([2])), base_class=1,
                        num_classes=3, config=FeatureCollisionConfig(steps=1))


def test_report_poisoning_section_from_records(svm_out, frogs_run_dir, tmp_path):
    assert main(["--quiet", "report", str(svm_out), str(frogs_run_dir), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "SVM poisoning" in md and "Poison Frogs" in md and "label flip" in md and "success on them" in md
    figures = sorted(p.name for p in (tmp_path / "rep" / "figures").iterdir())
    assert any("svm-iterations" in f for f in figures) and any("svm-points" in f for f in figures)
    assert any("svm-images" in f for f in figures) and any("frogs" in f for f in figures)


def test_append_trains_a_registry_model_on_the_svm_poisons_with_indices_recorded(svm_out, tmp_path):
    folder = _only(svm_out, "svm-")
    out = tmp_path / "appended"
    assert main(["--quiet", "poison", "append", "--poisons", str(folder), "--dataset", "digits", "--model", "mlp",
                 "--epochs", "1", "--subset", "400", "--batch-size", "50", "--out", str(out)]) == 0
    record = json.loads((out / "data_transform.json").read_text())
    n = record["n_train_before"]
    assert record["added"] == [n, n + 1] and record["n_train"] == n + 2 and record["replaced"] == []
    assert record["transform"]["name"] == "appended-poisons" and len(record["transform"]["sha256"]) == 64
    assert record["info"]["poison_labels"] == [1, 1]


def test_svm_on_2d_gaussians_records_positions_and_draws_the_path(tmp_path):
    out = tmp_path / "toy"
    assert main(["--quiet", "poison", "svm", "--dataset", "gaussians-2d", "--pair", "1,0", "--kernel", "rbf",
                 "--gamma", "5", "--C", "10", "--step-size", "0.1", "--train-size", "20", "--val-size", "100",
                 "--test-size", "100", "--out", str(out)]) == 0
    folder = _only(out, "svm-")
    rows = [r for r in read_records(folder / "records.jsonl") if r["method"] == "gradient"]
    assert all(len(r["position"]) == 2 for r in rows)
    assert load_file(folder / "poisons.safetensors")["surface_error"].shape == (30, 30)
    assert main(["--quiet", "report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert any("svm-path" in p.name for p in (tmp_path / "rep" / "figures").iterdir())


def test_demo_poisoning_step_writes_an_svm_record_set(tmp_path, capsys):
    from trustlab.demo import run_poisoning_demo

    s = run_poisoning_demo(tmp_path / "poison-svm")
    assert "Data poisoning (linear SVM, digits 7 vs 1" in capsys.readouterr().out
    assert s["n_poison"] == 2 and _only(tmp_path / "poison-svm", "svm-").is_dir()


def test_demo_backdoor_step_poisons_defends_and_records(tmp_path, capsys):
    import dataclasses

    from trustlab.demo import DEMO_BACKDOOR, run_backdoor_demo

    s = run_backdoor_demo(tmp_path / "backdoor", train=dataclasses.replace(DEMO_BACKDOOR, epochs=4))
    assert "Backdoor (BadNets 3x3 patch on 5% of the digits" in capsys.readouterr().out
    record = json.loads((tmp_path / "backdoor" / "poisoned" / "data_transform.json").read_text())
    assert s["n_poisoned"] == len(record["replaced"]) == round(0.05 * record["n_train"])  # POI-01
    assert 0 <= s["recall"] <= 1 and s["n_true_positive"] <= s["n_flagged"]
    assert s["asr_before"] > s["baseline_asr"] + 0.5  # the trigger was planted: the clean model ignores it
    for folder, prefix in (("poisoned", "backdoor-"), ("poisoned", "defend-activation-clustering-")):
        assert _only(tmp_path / "backdoor" / folder, prefix).is_dir()
    assert (tmp_path / "backdoor" / "defended").is_dir() and (tmp_path / "backdoor" / "clean").is_dir()
