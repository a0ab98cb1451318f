"""Layering: ``trustlab.reports`` reads records and never imports the code that computes them."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("trustlab.evaluation", "trustlab.training")


@pytest.mark.parametrize("module", ["trustlab.reports.report", "trustlab.reports.diagnosis"])
def test_reports_import_neither_evaluation_nor_training(module):
    """In a fresh interpreter, so modules imported by other tests can't hide a cycle."""
    code = (f"import sys, {module}\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
