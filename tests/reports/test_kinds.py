"""Record kinds: a new kind is one module-sized definition plus one registration; the report of today's runs does
not change unless a run holds the new kind's record sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_report_html import PGD, _write_json, _write_rows, make_run
from trustlab.reports.body import Body
from trustlab.reports.kinds import (
    Cell, RecordKind, ReportContext, ReportPart, builtin_kinds, get_kind, record_kinds, register_kind,
    unregister_kind,
)
from trustlab.reports.metrics import accuracy, robustness_matrix, same_eps
from trustlab.reports.report import SECTION_IDS, build_report, report_kinds
from trustlab.reports.runs import RunView, load_run, load_runs

# --- a toy kind, as a new module would define it ---------------------------------------------------------------


def _certified(run: RunView, eps: float | None) -> list:
    return [s for s in run.views("toy-certificate") if eps is not None and same_eps(s.config["eps"], eps)]


def _columns(runs) -> tuple[str, ...]:
    return ("toy-certified",) if any(run.views("toy-certificate") for run in runs) else ()


def _metrics(run: RunView, eps, p) -> dict[str, Cell]:
    sets = _certified(run, eps)
    return {"toy-certified": Cell(accuracy(sets[0].records, "certified"))} if sets else {}


def _rows(run: RunView) -> list[dict]:
    return [{"id": s.id, "eps": s.config["eps"], "n": len(s.records), "certified": accuracy(s.records, "certified"),
             "mean_radius": sum(r["radius"] for r in s.records) / len(s.records)} for s in run.views("toy-certificate")]


def _section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    rows = [{"run": run.name, **row} for run in ctx.runs for row in _rows(run)]
    body.table(rows, ["run", "id", "eps", "n", "certified", "mean_radius"], floatfmt={"eps": "g"},
               percent={"certified"})
    return ReportPart(body.section("toycerts", "Toy certified accuracy"), {"toy_certificates": rows})


def _run_part(run: RunView, ctx: ReportContext):
    body = Body()
    body.text(f"Toy certificates: {len(run.views('toy-certificate'))}.")
    return body.part({"toy_certificates": _rows(run)})


CERTIFICATE = RecordKind(name="toy-certificate", keys=("idx", "y", "certified", "radius"), folder="toycerts",
                         columns=_columns, metrics=_metrics, sections=(("toycerts", _section),),
                         run_part=_run_part, order=15)

# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def certificate_kind():
    register_kind(CERTIFICATE)
    try:
        yield CERTIFICATE
    finally:
        if "toy-certificate" in [k.name for k in record_kinds()]:
            unregister_kind("toy-certificate")


def _write_certificates(run: Path, eps: float = 0.1, certified: int = 30) -> Path:
    folder = run / "toycerts" / f"crown-linf-eps{eps:g}"
    _write_json(folder / "config.json", {"method": "crown", "eps": eps, "p": "inf"})
    _write_rows(folder / "records.jsonl", [{"idx": i, "y": i % 10, "certified": i < certified,
                                            "radius": eps if i < certified else 0.0} for i in range(50)])
    _write_json(folder / "summary.json", {"seconds": 1.0})
    return folder


def _report(runs: list[Path], out: Path) -> dict[str, str]:
    build_report(runs, out, eps=0.1)
    files = {name: (out / name).read_text(encoding="utf-8") for name in ("report.md", "report.json", "report.html")}
    files["figures"] = " ".join(sorted(p.name for p in (out / "figures").iterdir()))
    return files


def _section_ids(out: Path) -> list[str]:
    md = (out / "report.md").read_text(encoding="utf-8")
    return [line[len('<a id="'):-len('"></a>')] for line in md.splitlines() if line.startswith('<a id="')]


def test_a_registered_kind_adds_its_folder_column_section_and_run_facts(tmp_path, certificate_kind):
    run = make_run(tmp_path / "runs", "r", defense="pgd", clean=45,
                   attacks=[("fgsm", 0.1, {"loss": "ce"}, 35), ("pgd", 0.1, PGD, 25)])
    _write_certificates(run)
    view = load_run(run)
    (cert,) = view.views("toy-certificate")
    assert cert.id == "crown-linf-eps0.1" and len(cert.records) == 50 and cert.summary == {"seconds": 1.0}
    assert [a.name for a in view.attacks] == ["fgsm", "pgd"]  # the attack kind is untouched
    out = tmp_path / "report"
    build_report([run], out, eps=0.1)
    assert _section_ids(out) == [*SECTION_IDS[:5], "toycerts", *SECTION_IDS[5:]]
    md, page = (out / "report.md").read_text(encoding="utf-8"), (out / "report.html").read_text(encoding="utf-8")
    assert "## Toy certified accuracy" in md and "| crown-linf-eps0.1 |" in md and "Toy certificates: 1." in md
    assert '<section id="toycerts">' in page
    data = json.loads((out / "report.json").read_text())
    assert data["toy_certificates"] == [{"run": "r", "id": "crown-linf-eps0.1", "eps": 0.1, "n": 50, "certified": 0.6,
                                     "mean_radius": pytest.approx(0.06)}]
    (row,) = data["matrix"]
    assert row["toy-certified"] == 0.6 and row["pgd"] == 0.5 and row["fgsm"] == 0.7
    assert row["worst"] == 0.5  # a certificate is not an attack: it stays out of the worst case
    assert data["runs"][0]["toy_certificates"][0]["certified"] == 0.6 and len(data["runs"][0]["attacks"]) == 2
    assert "| toy-certified | worst | n |" in md  # a new column goes before worst and n


def test_unregistering_restores_the_old_report(tmp_path):
    run = make_run(tmp_path / "runs", "r", defense="fgsm", clean=45,
                   attacks=[("fgsm", 0.1, {"loss": "ce"}, 40), ("pgd", 0.1, PGD, 5)])
    before = _report([run], tmp_path / "before")
    _write_certificates(run)
    assert _report([run], tmp_path / "ignored") == before  # an unregistered kind's folder is not read
    register_kind(CERTIFICATE)
    try:
        assert get_kind("toy-certificate") is CERTIFICATE
        assert [k.name for k in report_kinds(load_runs([run]))] == ["attack", "toy-certificate", "training"]
        assert _report([run], tmp_path / "with") != before
        other = make_run(tmp_path / "runs", "plain", defense="fgsm", clean=45,
                         attacks=[("fgsm", 0.1, {"loss": "ce"}, 40), ("pgd", 0.1, PGD, 5)])
        plain = _report([other], tmp_path / "plain")  # registered, but no run holds a certificate
        assert "toycerts" not in plain["report.md"] and "toy-certified" not in plain["report.json"]
    finally:
        unregister_kind("toy-certificate")
    assert _report([run], tmp_path / "after") == before
    assert [k.name for k in record_kinds()] == [k.name for k in builtin_kinds()] == ["attack", "certificate", "smoothing", "training",
                                                                                      "poisoning", "llm"]
    assert "toy-certificate" not in load_run(run).sets


def test_registry_refuses_clashes_and_bad_kinds(certificate_kind):
    with pytest.raises(ValueError, match="already registered"):
        register_kind(CERTIFICATE)
    with pytest.raises(ValueError, match="attacks/"):
        register_kind(RecordKind(name="other", keys=("idx",), folder="attacks"))
    with pytest.raises(ValueError, match="run root"):
        register_kind(RecordKind(name="root2", keys=("idx",)))
    with pytest.raises(ValueError, match="'matrix'"):
        register_kind(RecordKind(name="m", keys=("idx",), folder="m", sections=(("matrix", _section),)))
    with pytest.raises(TypeError, match="RecordKind"):
        register_kind("toy-certificate")
    with pytest.raises(ValueError, match="can't be unregistered"):
        unregister_kind("training")
    with pytest.raises(ValueError, match="unknown record kind 'nope'"):
        unregister_kind("nope")
    for bad, match in ((dict(name="Bad Name", keys=("idx",)), "kind name must be lower-case letters"),
                       (dict(name="k", keys=()), r"keys must name at least one field, got \(\)"),
                       (dict(name="k", keys=("idx",), folder="../up"), "folder must be one lower-case folder name"),
                       (dict(name="k", keys=("idx",), folder="f", sections=(("a", _section),) * 2),
                        r"section ids must be unique non-empty strings, got \['a', 'a'\]"),
                       (dict(name="k", keys=("idx",), load=tuple), "reads the run root, whose view is the RunView")):
        with pytest.raises(ValueError, match=match):
            RecordKind(**bad)


def test_the_matrix_takes_its_columns_from_the_kinds(tmp_path):
    run = make_run(tmp_path / "runs", "r", defense="none", clean=45,
                   attacks=[("fgsm", 0.1, {"loss": "ce"}, 35), ("pgd", 0.1, PGD, 25), ("linear", 0.1, {}, 30)])
    (row,) = robustness_matrix(load_runs([run]))
    # FGSM and PGD first, then every other attack evaluated, so the worst case covers every evaluation
    assert [c for c in row if c in ("clean", "fgsm", "pgd", "linear")] == ["fgsm", "pgd", "linear", "clean"]
    assert row["worst"] == 0.5 and row["linear"] == 0.6
    (row,) = robustness_matrix(load_runs([run]), ("clean", "linear", "apgd"))
    assert row["clean"] == 0.9 and row["linear"] == 0.6 and row["apgd"] is None and row["worst"] == 0.6


def test_run_view_keeps_attacks_as_the_attack_kind_views():
    run = RunView(name="r", path=Path("r"), config={}, summary={}, records=({"idx": 0},), attacks=("a",))
    assert run.attacks == ("a",) and run.sets == {"attack": ("a",)} and run.views("toy-certificate") == ()
    assert RunView("r", Path("r"), {}, {}, records=(), sets={"attack": ("a",)}) == run.__class__(
        "r", Path("r"), {}, {}, records=(), attacks=("a",))
    with pytest.raises(ValueError, match="not both"):
        RunView("r", Path("r"), {}, {}, records=(), attacks=("a",), sets={"attack": ("b",)})
