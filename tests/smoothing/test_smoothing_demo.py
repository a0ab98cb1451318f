"""The demo's randomized-smoothing step: noise training, CERTIFY and the report section, end to end on the digits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np


def test_demo_smoothing_step_certifies_and_reports(tmp_path, capsys):
    from trustlab.demo import DEMO_SMOOTHING, run_smoothing_demo

    s = run_smoothing_demo(tmp_path / "smoothing", train=dataclasses.replace(DEMO_SMOOTHING, epochs=2), n=100,
                           n_examples=30)
    assert "Randomized smoothing (cnn-small trained with Gaussian noise sigma=0.5" in capsys.readouterr().out
    (folder,) = (tmp_path / "smoothing" / "run" / "smoothing").iterdir()
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    assert len(records) == s["n_examples"] == 30
    config = json.loads((folder / "config.json").read_text())
    assert (config["sigma"], config["n0"], config["n"], config["alpha"]) == (0.5, 100, 100, 0.001)
    # the summary is the records' own: accuracy at radius 0 counts correct non-abstentions, radii shrink it
    assert s["certified_acc"]["0"] == np.mean([r["correct"] and not r["abstain"] for r in records])
    curve = [s["certified_acc"][k] for k in ("0", "0.25", "0.5", "0.75", "1")]
    assert curve == sorted(curve, reverse=True) and curve[0] > 0.3  # above chance (0.1) after 2 epochs
    # no radius beyond what n = 100 samples at alpha 0.001 can give: sigma * PhiInv(alpha ** (1 / n)) (RS-10)
    from scipy.stats import norm
    assert max(r["radius"] for r in records) <= 0.5 * norm.ppf(0.001 ** (1 / 100)) + 1e-9
    md = (tmp_path / "smoothing" / "report" / "report.md").read_text()
    assert "## Randomized smoothing" in md and "| gaussian | 0.5 |" in md
