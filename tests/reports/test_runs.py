"""Reading run folders: both formats of the training defense, errors that name the file, and no folder left
behind by a report that fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from test_report_html import _write_json, make_run
from trustlab.reports.diagnosis import diagnose
from trustlab.reports.html import Section
from trustlab.reports.metrics import default_threat
from trustlab.reports.report import build_report
from trustlab.reports.runs import AttackView, RunView, load_run

DEFENSES = [("pgd", "pgd"), ({"name": "pgd", "steps": 10, "step_size": None}, "pgd"),
            ({"name": "fgsm-rs", "step_size": 0.0375}, "fgsm-rs"), ("none", "none"), ({"name": "none"}, "none")]


def _with_defense(run: Path, defense) -> Path:
    config = json.loads((run / "config.json").read_text())
    config["config"]["defense"] = defense
    _write_json(run / "config.json", config)
    return run


@pytest.mark.parametrize("defense, name", DEFENSES)
def test_defense_and_label_read_the_name_and_the_dict_format(tmp_path, defense, name):
    run = load_run(_with_defense(make_run(tmp_path, "r", defense="none", clean=40, attacks=[]), defense))
    assert run.defense == name
    assert run.label == ("none" if name == "none" else f"{name} (linf eps=0.1)")
    assert run.train_threat == (0.1, math.inf)


def test_the_dict_format_drives_the_default_threat_and_the_overfitting_check(tmp_path):
    """A single-step-trained run in the new format is still checked for catastrophic overfitting."""
    history = [{"epoch": 1, "train_acc": 0.9}]
    records = tuple({"idx": i, "y": 0, "pred": 0, "correct": True} for i in range(4))
    rows = tuple({**r, "adv_pred": 1, "adv_correct": False, "robust": False} for r in records)
    pgd = AttackView(id="pgd", name="pgd", eps=0.1, p=math.inf, threat={"eps": 0.1}, params={"steps": 10},
                     seed=0, records=rows, summary={}, config={}, path=Path("."))
    for defense in ("fgsm", {"name": "fgsm", "eps_schedule": None}):
        run = RunView(name="r", path=Path("r"), config={"config": {"defense": defense, "eps": 0.1, "p": "inf"}},
                      summary={"history": history}, records=records, attacks=(pgd,))
        assert [f.code for f in diagnose([run])] == ["catastrophic_overfitting"]
        assert default_threat([run]) == (0.1, math.inf)


@pytest.mark.parametrize("where", ["run", "attack"])
@pytest.mark.parametrize("text, match", [("", "holds no records"), ("\n\n", "holds no records"),
                                         ('{"idx": 0\n', "line 1 is not valid JSON"),
                                         ("[1, 2]\n", "line 1 must hold a JSON object"),
                                         ('{"idx": 0}\n', "line 1 lacks the fields")])
def test_an_empty_or_malformed_records_file_is_named(tmp_path, where, text, match):
    run = make_run(tmp_path, "r", defense="none", clean=40, attacks=[("fgsm", 0.1, {"loss": "ce"}, 10)])
    path = run / "records.jsonl" if where == "run" else next((run / "attacks").iterdir()) / "records.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        load_run(run)
    assert str(path) in str(info.value)
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=match):
        build_report([run], out)
    assert not out.exists()  # nothing written: no empty figures/ folder


def test_a_records_file_that_is_not_utf8_is_named(tmp_path):
    run = make_run(tmp_path, "r", defense="none", clean=40, attacks=[])
    (run / "records.jsonl").write_bytes(b'{"idx": "\xff"}\n')
    with pytest.raises(ValueError, match="not UTF-8") as info:
        load_run(run)
    assert str(run / "records.jsonl") in str(info.value)


def test_a_clashing_section_id_is_refused_before_anything_is_written(tmp_path):
    run = make_run(tmp_path, "r", defense="none", clean=40, attacks=[("fgsm", 0.1, {"loss": "ce"}, 10)])
    out = tmp_path / "report"
    with pytest.raises(ValueError, match="unique"):
        build_report([run], out, extra_sections=[Section("curves", "again", "", "")])
    assert not out.exists()
