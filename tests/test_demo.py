"""The demo end to end (issue 3): digits matrix, diagnosis, optimizer trajectories, and an HTML report that renders
in headless Chromium with every section and no console error."""

from __future__ import annotations

from trustlab.demo import DEMO_MATRIX, run_demo
from trustlab.reports.report import SECTION_IDS


def test_demo_writes_report_that_renders(tmp_path, capsys, render_in_chromium):
    result = run_demo(tmp_path / "demo", progress=False)
    out = capsys.readouterr().out
    assert "| run |" in out and "Report:" in out and str(result.report.resolve()) in out
    assert [r["train"].split()[0] for r in result.rows] == list(DEMO_MATRIX.train)
    none, fgsm, pgd = result.rows
    assert none["clean"] > 0.9 and pgd["pgd"] > none["pgd"]  # adversarial training buys PGD robustness on digits
    dom, console = render_in_chromium(result.report, tmp_path)
    assert console == []
    for sid in (*SECTION_IDS, "optim"):
        assert f'id="{sid}"' in dom, sid
    assert (tmp_path / "demo" / "optim" / "optim-cubic-saddle.png").stat().st_size > 0
