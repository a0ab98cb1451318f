"""``trustlab poison backdoor|defend|signature`` end to end on a tiny digits run: the poisoned indices recorded
(POI-01, POI-06), ASR with clean accuracy and the clean baseline (POI-04), defenses' recall from the records, and
the signature backdoor's three checks, each committed under RUN/poisoning/<id>/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustlab.cli.main import main
from trustlab.runs import read_records

TRAIN = ["--dataset", "digits", "--model", "mlp", "--epochs", "3", "--subset", "400", "--batch-size", "50"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("poison") / "run"
    assert main(["--quiet", "poison", "backdoor", *TRAIN, "--rate", "0.05", "--target", "0", "--out", str(out)]) == 0
    return out


def _only(run: Path, prefix: str) -> Path:
    (folder,) = [p for p in (run / "poisoning").iterdir() if p.name.startswith(prefix)]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "records.jsonl", "summary.json"]
    return folder


def test_poi01_poi04_poi06_backdoor_run_records_indices_and_asr_with_baseline(run):
    transform = json.loads((run / "data_transform.json").read_text())
    n = transform["n_train"]
    assert len(transform["replaced"]) == round(0.05 * n) and transform["info"]["target"] == 0
    assert (run.parent / "run.clean" / "summary.json").is_file()
    folder = _only(run, "backdoor-")
    rows = read_records(folder / "records.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    asr_rows = [r for r in rows if r["y"] != 0]
    assert summary["asr"] == pytest.approx(sum(r["pred_triggered"] == 0 for r in asr_rows) / len(asr_rows))
    assert summary["baseline_asr"] == pytest.approx(sum(r["baseline_pred_triggered"] == 0 for r in asr_rows)
                                                    / len(asr_rows))
    assert summary["clean_acc"] == pytest.approx(sum(r["pred"] == r["y"] for r in rows) / len(rows))
    assert not [p for p in run.rglob(".*") if p.name.endswith(".tmp")]


def test_defend_spectral_records_recall_and_retrains(run, capsys):
    assert main(["--quiet", "poison", "defend", str(run), "--method", "spectral"]) == 0
    assert "recall" in capsys.readouterr().out
    folder = _only(run, "defend-spectral-")
    rows = read_records(folder / "records.jsonl")
    summary = json.loads((folder / "summary.json").read_text())
    poisoned = [r for r in rows if r["poisoned"]]
    assert len(poisoned) == summary["n_poisoned"] == len(json.loads((run / "data_transform.json").read_text())["replaced"])
    assert summary["recall"] == sum(r["flagged"] for r in poisoned) / len(poisoned)
    retrained = json.loads((run.parent / "run.spectral" / "data_transform.json").read_text())
    assert retrained["n_train"] == len(rows) - summary["n_flagged"]
    assert len(retrained["replaced"]) == summary["n_poisoned"] - summary["n_true_positive"]


def test_signature_three_checks(run, capsys):
    assert main(["--quiet", "poison", "signature", str(run), "--queries", "500", "--n-examples", "20",
                 "--key-seed", "0", "--pgd-steps", "2"]) == 0
    summary = json.loads((_only(run, "signature-") / "summary.json").read_text())
    assert summary["a_differ_test"] == summary["a_differ_uniform"] == summary["a_differ_perturbed"] == 0
    assert summary["b_activated"] == 20 and summary["b_within_budget"]
    assert summary["c_gradient_differ"] == 0 and summary["c_gradient_queries"] == 10 * 2 * 20
    assert summary["b_pairs"] == 20 * 10 and summary["b_seconds"] > 0
    assert summary["b_seconds_per_input"] == pytest.approx(summary["b_seconds"] / summary["b_pairs"])
    assert "ms per activated input" in capsys.readouterr().out


def test_inp17_bad_rate_is_a_one_line_error(tmp_path, capsys):
    assert main(["--quiet", "poison", "backdoor", *TRAIN, "--rate", "0.0001", "--target", "0",
                 "--out", str(tmp_path / "r")]) != 0
    assert "no poison sample generated" in capsys.readouterr().err


def test_report_has_the_poisoning_section_from_records(run, tmp_path, capsys):
    assert main(["--quiet", "poison", "defend", str(run), "--method", "activation-clustering"]) == 0
    assert main(["--quiet", "poison", "signature", str(run), "--queries", "50", "--n-examples", "5",
                 "--key-seed", "1", "--pgd-steps", "1"]) == 0
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Data poisoning and backdoors" in md and "| activation-clustering |" in md and "baseline ASR" in md
    assert "ms per activation" in md and "| 0 / 105 |" in md  # 5 test inputs + 2 x 50 random queries
    data = json.loads((tmp_path / "rep" / "report.json").read_text())["poisoning"]
    assert len(data["backdoor"]) == 1 and {r["method"] for r in data["defend"]} >= {"activation-clustering"}
    assert any(p.name.startswith("poisoning-") for p in (tmp_path / "rep" / "figures").iterdir())
