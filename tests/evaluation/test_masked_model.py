"""EVAL-09/EVAL-10 end to end, through the CLI: a deliberately masked model (input quantization in front of
cnn-small) looks robust to PGD, the checks flag it, Square and PGD through BPDA break it, and the report says so."""

from __future__ import annotations

import json

import pytest

from trustlab.cli.main import main
from trustlab.reports.runs import load_run


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("masked") / "run"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "cnn-small-quantized", "--epochs", "8",
                 "--out", str(run)]) == 0
    common = ["--eps", "0.2", "--subset", "200"]
    assert main(["--quiet", "attack", str(run), "--attack", "pgd", "--steps", "20", *common]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "pgd", "--steps", "20", "--bpda", *common]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "square", "--queries", "500", *common]) == 0
    return run


def _robust(run, name: str) -> float:
    (view,) = [v for v in load_run(run).attacks if v.name == name]
    return view.summary["robust_acc"]


def test_eval09_masked_model_pgd_high_bpda_and_square_low(masked_run):
    clean = json.loads((masked_run / "summary.json").read_text())["test_acc"]
    pgd, bpda, square = _robust(masked_run, "pgd"), _robust(masked_run, "pgd+bpda"), _robust(masked_run, "square")
    assert clean > 0.8
    # the zero gradient leaves plain PGD its random start only, while BPDA and Square see through the rounding
    assert pgd > 0.5 * clean
    assert bpda < pgd - 0.3 and square < pgd - 0.3
    bpda_dir = next((masked_run / "attacks").glob("pgd-bpda-*"))
    assert json.loads((bpda_dir / "config.json").read_text())["bpda"] is True


def test_eval09_eval10_report_says_the_gradients_are_masked(masked_run, tmp_path):
    assert main(["--quiet", "report", str(masked_run), "--out", str(tmp_path / "rep")]) == 0
    flags = {f["code"]: f for f in json.loads((tmp_path / "rep" / "report.json").read_text())["flags"]}
    assert {"blackbox_beats_whitebox", "zero_gradients"} <= set(flags)
    words = flags["blackbox_beats_whitebox"]["message"]
    assert "pgd+bpda" in words and "square" in words and "masked" in words and "worst case" in words
    assert "--bpda" in flags["zero_gradients"]["message"]
    (row,) = json.loads((tmp_path / "rep" / "report.json").read_text())["matrix"]
    assert row["worst"] == min(row["pgd"], row["pgd+bpda"], row["square"]) < row["pgd"]  # the headline is not PGD's
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "the gradients are masked" in page


def test_bpda_flag_refuses_a_model_without_preprocessing(tmp_path, capsys):
    run = tmp_path / "plain"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "100",
                 "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "pgd", "--eps", "0.1", "--bpda"]) != 0
    assert "nothing to approximate" in capsys.readouterr().err
    assert not (run / "attacks").exists() or not any((run / "attacks").iterdir())
