"""Layering: ``trustlab.reports`` reads records and never imports the code that computes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("trustlab.evaluation", "trustlab.training")
MODEL_CODE = (*FORBIDDEN, "trustlab.models", "trustlab.checkpoint", "trustlab.attacks")


@pytest.mark.parametrize("module", ["trustlab.reports.report", "trustlab.reports.diagnosis"])
def test_reports_import_neither_evaluation_nor_training(module):
    """In a fresh interpreter, so modules imported by other tests can't hide a cycle."""
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_building_a_report_loads_no_model(tmp_path):
    """Compute writes records; reports read records: a whole report imports no model, checkpoint or attack."""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_report_html import PGD, make_run\n"
            "from trustlab.reports.report import build_report\n"
            f"root = __import__('pathlib').Path({str(tmp_path)!r})\n"
            "run = make_run(root, 'r', defense='pgd', clean=40,\n"
            "               attacks=[('fgsm', 0.1, {}, 20), ('pgd', 0.1, PGD, 10)])\n"
            "build_report([run], root / 'report')\n"
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({MODEL_CODE!r}))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "" and (tmp_path / "report" / "report.html").is_file()
