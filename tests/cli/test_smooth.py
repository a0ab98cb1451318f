"""``trustlab smooth`` end to end on a tiny digits run: one record per example committed atomically under
RUN/smoothing/<id>/, the settings in config.json (RS-08), the summary's metrics from the records (RS-10), the
report section with its guarantee and caveat, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trustlab.cli.main import main
from trustlab.reports.kinds.smoothing import (FLOAT_CAVEAT, GUARANTEE, REPORT_RADII, average_certified_radius,
                                              certified_accuracy)
from trustlab.runs import read_records
from trustlab.smoothing import ABSTAIN
from trustlab.training import TrainConfig, train_run

CERTIFY = ["--sigma", "0.25", "--n0", "20", "--n", "200", "--alpha", "0.01", "--n-examples", "30"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smooth") / "run"
    config = TrainConfig.from_dict({"dataset": "digits", "model": "mlp", "epochs": 3, "subset": 400, "batch_size": 50,
                                    "lr": 0.002, "defense": "noise", "noise_sigma": 0.25, "noise_check_n": 20})
    train_run(config, out, progress=False)
    return out


def test_smooth_certify_writes_one_record_per_example_and_prints_the_table(run, capsys):
    assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY]) == 0
    out = capsys.readouterr().out
    assert "smooth certify (gaussian) on the first 30 test examples" in out and "| ACR" in out
    (folder,) = (run / "smoothing").iterdir()
    assert folder.name.startswith("certify-gaussian-sigma0.25-n200-alpha0.01-n30-")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "records.jsonl", "summary.json"]
    assert not [p for p in run.rglob(".*") if p.name.endswith(".tmp")]
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("sigma", "n0", "n", "alpha", "p")} == {"sigma": 0.25, "n0": 20, "n": 200,
                                                                         "alpha": 0.01, "p": 2.0}
    records = read_records(folder / "records.jsonl")
    assert [r["idx"] for r in records] == list(range(30))
    for r in records:
        assert r["correct"] == (r["prediction"] == r["y"]) and r["abstain"] == (r["prediction"] == ABSTAIN)
        assert (r["radius"] == 0) if r["abstain"] else (r["pA_lower"] >= 0.5 and r["radius"] >= 0)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["certified_acc"]["0"] == certified_accuracy(records, 0.0) == summary["accuracy"]
    assert summary["average_certified_radius"] == average_certified_radius(records)


def test_same_command_twice_gives_the_same_records_and_predict_writes_its_own_set(run, capsys):
    assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY, "--batch-size", "77"]) == 0
    (folder,) = (run / "smoothing").iterdir()  # same configuration, same folder (batch size not in the id)
    first = read_records(folder / "records.jsonl")
    assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_records(folder / "records.jsonl")) == strip(first)
    assert main(["--quiet", "smooth", "predict", str(run), "--sigma", "0.25", "--n", "100", "--n-examples", "10"]) == 0
    assert len(list((run / "smoothing").iterdir())) == 2


def test_rs10_certified_accuracy_counts_abstentions_as_incorrect():
    rows = [{"correct": True, "radius": 0.5}, {"correct": False, "radius": 0.0, "abstain": True},
            {"correct": True, "radius": 1.2}, {"correct": False, "radius": 0.9}]
    assert [certified_accuracy(rows, r) for r in (0.0, 0.5, 1.0, 1.5)] == [0.5, 0.5, 0.25, 0.0]
    assert average_certified_radius(rows) == pytest.approx((0.5 + 1.2) / 4)
    assert REPORT_RADII == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def test_rs10_report_states_the_guarantee_and_the_caveat(run, tmp_path, capsys):
    assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY]) == 0
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "Randomized smoothing" in md and GUARANTEE in md and FLOAT_CAVEAT in md
    assert "not simultaneously over the dataset" in md and "| r=0.25" in md
    assert list((tmp_path / "rep" / "figures").glob("smoothing-*.png"))


def test_report_shows_l1_certificates_and_the_linf_view_of_the_l2_ones(run, tmp_path, capsys):
    """Acceptance 3 of issue 11: uniform and Laplace (l_1) sets get their own figure and rows next to the Gaussian
    (l_2) one, and the l_2 certificates are also shown in l_inf: accuracy at eps = l_2 accuracy at eps sqrt(d)."""
    assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY]) == 0
    for noise in ("uniform", "laplace"):
        assert main(["--quiet", "smooth", "certify", str(run), *CERTIFY, "--noise", noise]) == 0
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    figures = {p.name for p in (tmp_path / "rep" / "figures").glob("smoothing-*.png")}
    assert {f for f in figures if f.endswith(("-l1.png", "-l2.png"))} and any("linf" in f for f in figures)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {(r["noise"], r["radius"]) for r in report["smoothing"]} >= {("gaussian", "l2"), ("uniform", "l1"),
                                                                        ("laplace", "l1")}
    (gauss,) = [f for f in (run / "smoothing").iterdir() if f.name.startswith("certify-gaussian")]
    records = read_records(gauss / "records.jsonl")
    (row,) = [r for r in report["smoothing_linf"] if r["id"] == gauss.name]
    assert row["d"] == 64  # digits: 1 x 8 x 8
    for eps in (0.01, 0.02, 0.05, 0.1, 0.3):
        assert row[f"linf={eps:g}"] == certified_accuracy(records, eps * 8.0)
    best = max(r["radius"] for r in records if r["correct"])
    assert row["max linf"] == pytest.approx(best / 8.0)
    assert "l\\_inf view of the Gaussian (l2) certificates" in next((tmp_path / "rep").glob("*.md")).read_text()


def test_report_puts_every_runs_gaussian_curves_in_one_figure_only_with_several_runs(run, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    for r in (run, twin):
        assert main(["--quiet", "smooth", "certify", str(r), *CERTIFY]) == 0
    assert main(["--quiet", "report", str(run), str(twin), "--out", str(tmp_path / "both")]) == 0
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "both" / "figures" / "smoothing-all-l2.png").is_file()
    assert not (tmp_path / "one" / "figures" / "smoothing-all-l2.png").exists()


@pytest.mark.parametrize("argv, match", [
    (["--sigma", "0"], "sigma"), (["--sigma", "0.25", "--alpha", "1.5"], "alpha"),
    (["--sigma", "0.25", "--n0", "0"], "n0"), (["--sigma", "0.25", "--n-examples", "0"], "n-examples"),
])
def test_bad_settings_are_one_line_errors(run, capsys, argv, match):
    assert main(["smooth", "certify", str(run), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustlab smooth: error:") and match in err and "\n" not in err
