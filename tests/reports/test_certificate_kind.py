"""The certificate record kind: its matrix columns (lower bounds, outside the attack worst case), its section with
certified-vs-attacked curves and table, and EVAL-14 across kinds (a certified example broken by an attack is an
error flag naming a soundness bug), on crafted record sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_report_html import N, PGD, _write_json, _write_rows, make_run
from trustlab.reports.diagnosis import diagnose_run
from trustlab.reports.kinds.certificate import CERTIFIED_BUT_BROKEN, certified_but_broken
from trustlab.reports.report import SECTION_IDS, build_report
from trustlab.reports.runs import load_run


def _attack_rows(run: Path, attack: str, eps: float) -> list[dict]:
    (folder,) = [f for f in (run / "attacks").iterdir() if f.name.startswith(f"{attack}-linf-eps{eps:g}")]
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]


def _write_certificate(run: Path, method: str, eps: float, certified: set[int], *, p: str = "inf") -> Path:
    folder = run / "certificates" / f"{method}-l{p}-eps{eps:g}-n{N}"
    clean = {r["idx"]: r for r in (json.loads(x) for x in (run / "records.jsonl").read_text().splitlines())}
    _write_json(folder / "config.json", {"method": {"method": method}, "name": method, "subset": N,
                                         "threat": {"eps": eps, "p": p, "lower": 0.0, "upper": 1.0},
                                         "margin_tol": 1e-5})
    rows = [{"idx": i, "y": clean[i]["y"], "pred": clean[i]["pred"], "correct": clean[i]["correct"],
             "verdict": "certified" if i in certified else "unknown" if clean[i]["correct"] else "falsified",
             "certified": i in certified, "min_margin_lower": 0.5 if i in certified else -0.5,
             "margin_lower": {}, "seconds": 0.001} for i in range(N)]
    _write_rows(folder / "records.jsonl", rows)
    _write_json(folder / "summary.json", {"method": method, "n": N, "seconds_per_example": 0.001,
                                          "mean_min_margin_lower": 0.1})
    return folder


@pytest.fixture()
def run(tmp_path) -> Path:
    return make_run(tmp_path / "runs", "r", defense="ibp", clean=45,
                    attacks=[("fgsm", 0.1, {"loss": "ce"}, 35), ("pgd", 0.1, PGD, 25)])


def _robust(run: Path, eps: float = 0.1) -> set[int]:
    return {r["idx"] for r in _attack_rows(run, "pgd", eps) if r["robust"]}


def test_eval14_is_silent_when_every_certified_example_survives_every_attack(run, tmp_path):
    robust = sorted(_robust(run))
    _write_certificate(run, "ibp", 0.1, set(robust[:10]))
    _write_certificate(run, "crown", 0.1, set(robust[:20]))
    assert certified_but_broken(load_run(run)) == []
    build_report([run], tmp_path / "rep", eps=0.1)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["certificate_flags"] == [] and CERTIFIED_BUT_BROKEN not in {f["code"] for f in data["flags"]}
    assert "SOUNDNESS" not in (tmp_path / "rep" / "report.md").read_text()


def test_eval14_flags_a_certified_example_that_an_attack_breaks(run, tmp_path):
    broken = sorted({r["idx"] for r in _attack_rows(run, "pgd", 0.1) if r["correct"] and not r["robust"]})
    robust = sorted(_robust(run))
    _write_certificate(run, "crown", 0.1, set(robust[:5]) | {broken[0]})
    (flag,) = certified_but_broken(load_run(run))
    assert flag.code == CERTIFIED_BUT_BROKEN and flag.severity == "error" and "SOUNDNESS BUG" in flag.message
    assert "certificate is unsound" in flag.message and f"idx [{broken[0]}]" in flag.message
    assert flag.evidence["attacks"] == {a: [broken[0]] for a in flag.evidence["attacks"]}
    assert any(a.startswith("pgd-") for a in flag.evidence["attacks"])
    assert CERTIFIED_BUT_BROKEN in {f.code for f in diagnose_run(load_run(run))}  # in the run's own flags too
    build_report([run], tmp_path / "rep", eps=0.1)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    (diag,) = [f for f in data["flags"] if f["code"] == CERTIFIED_BUT_BROKEN]
    assert diag["severity"] == "error" and data["certificate_flags"] == [diag]
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "1 SOUNDNESS ERROR(S) (EVAL-14)" in md and '<p class="flag-error">1 SOUNDNESS ERROR(S)' in page


def test_eval14_compares_budgets_and_norms_soundly(run):
    broken = sorted({r["idx"] for r in _attack_rows(run, "pgd", 0.1) if r["correct"] and not r["robust"]})
    _write_certificate(run, "ibp", 0.2, {broken[0]})  # the eps 0.1 attack searched a subset of the 0.2 ball
    _write_certificate(run, "crown", 0.05, {broken[1]})  # broken at 0.1 only: no contradiction at 0.05
    _write_certificate(run, "alpha-crown", 0.1, {broken[2]}, p="2")  # another norm: not compared
    flags = certified_but_broken(load_run(run))
    assert [f.evidence["certificate"] for f in flags] == [f"ibp-linf-eps0.2-n{N}"]


def test_certified_columns_are_lower_bounds_outside_the_worst_case(run, tmp_path):
    robust = sorted(_robust(run))
    _write_certificate(run, "crown", 0.1, set(robust[:20]))
    _write_certificate(run, "ibp", 0.1, set(robust[:10]))
    _write_certificate(run, "ibp", 0.05, set(robust[:15]))
    build_report([run], tmp_path / "rep", eps=0.1)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    (row,) = data["matrix"]
    assert row["certified-ibp"] == 0.2 and row["certified-crown"] == 0.4 and row["pgd"] == 0.5
    assert row["worst"] == 0.5  # the per-example worst case is over attacks only
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| pgd | certified-ibp | certified-crown | worst | n |" in md  # loosest method first, before worst
    rows = {(r["method"], r["eps"]): r for r in data["certificates"]}
    assert rows[("crown", 0.1)]["attack"] == 0.5 and rows[("crown", 0.1)]["gap"] == pytest.approx(0.1)
    assert rows[("ibp", 0.05)]["attack"] is None  # no attack at 0.05
    assert rows[("ibp", 0.1)]["clean"] == 0.9 and rows[("ibp", 0.1)]["ms_per_example"] == 1.0
    ids = [line[len('<a id="'):-len('"></a>')] for line in md.splitlines() if line.startswith('<a id="')]
    assert ids == [*SECTION_IDS[:5], "certified", *SECTION_IDS[5:]]
    assert (tmp_path / "rep" / "figures" / "certified-00-r-linf.png").is_file()
    assert "## Certified accuracy" in md and "Certifications (bound method and settings" in md
    assert data["runs"][0]["certifications"][0]["settings"] == {"method": "ibp"}


def test_a_report_without_certificates_has_no_certified_section(run, tmp_path):
    build_report([run], tmp_path / "rep", eps=0.1)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "certified" not in md.lower()
    assert "certificate" not in json.loads((tmp_path / "rep" / "report.json").read_text())


def test_a_certificate_config_without_a_threat_is_named(run):
    folder = _write_certificate(run, "ibp", 0.1, set())
    _write_json(folder / "config.json", {"name": "ibp"})
    with pytest.raises(ValueError, match=r"config.json needs threat.eps and the method's name"):
        load_run(run)


def test_solver_rows_show_unknowns_times_and_the_counterexamples_a_method_proved(run, tmp_path):
    """Issue 15: the section's table gives UNKNOWN counts and median/max time per example; the examples a solver
    proved non-robust (verdict falsified on a correctly classified input) are drawn from counterexamples.safetensors,
    the clean misclassifications are not."""
    import torch
    from safetensors.torch import save_file

    robust = sorted(_robust(run))
    folder = _write_certificate(run, "milp", 0.1, set(robust[:5]))
    rows = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    proven = [r["idx"] for r in rows if r["verdict"] == "unknown"][:3]
    wrong = [r["idx"] for r in rows if r["verdict"] == "falsified"][:1]
    for r in rows:
        if r["idx"] in proven:
            r["verdict"] = "falsified"
    _write_rows(folder / "records.jsonl", rows)
    summary = json.loads((folder / "summary.json").read_text())
    _write_json(folder / "summary.json", {**summary, "seconds_median": 0.25, "seconds_max": 4.0})
    idx = proven + wrong
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(len(idx), 1, 8, 8, generator=gen)
    save_file({"idx": torch.tensor(idx), "clean": clean, "counterexample": (clean + 0.1).clamp(0, 1)},
              str(folder / "counterexamples.safetensors"))
    build_report([run], tmp_path / "rep", eps=0.1)
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    (row,) = [r for r in data["certificates"] if r["method"] == "milp"]
    unknown = sum(r["verdict"] == "unknown" for r in rows)
    assert row["unknown"] == unknown and row["ms_median"] == 250.0 and row["ms_max"] == 4000.0
    figures = sorted(p.name for p in (tmp_path / "rep").rglob("counterexamples-*.png"))
    assert len(figures) == 1 and "milp" in figures[0]
