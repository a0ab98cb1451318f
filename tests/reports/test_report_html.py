"""build_report on synthetic run folders: every section, figures followed by tables, EVAL-20 completeness,
SEC-12 escaping, and the page rendered in headless Chromium without console errors."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from trustlab.data import registry
from trustlab.reports.html import Section, escape, figure_html, html_table
from trustlab.reports.report import SECTION_IDS, build_report

N = 50
EVIL = "<img src=x onerror=alert(1)>[click](javascript:alert(2))\x1b[31m"
SCRIPT = "<script>alert(1)</script>"
EVIL_CLASSES = tuple([SCRIPT, "$\\alpha$ [x](http://evil.example)"] + [f"class {i}" for i in range(2, 10)])
PGD = {"steps": 10, "step_size": 0.025, "random_start": True, "restarts": 1, "loss": "ce"}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def make_run(root: Path, name: str, *, defense: str, clean: int, attacks: list[tuple[str, float, dict, int]],
             dataset: str = "digits", history: bool = True, seed: int = 0, model: str = "mlp") -> Path:
    """A run folder like train_run + attack_run write: the first ``clean`` of a fixed permutation are right and
    the first ``robust`` survive each attack (so the sets are nested)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    order = rng.permutation(N)
    rank = np.empty(N, dtype=int)
    rank[order] = np.arange(N)
    y = rng.integers(0, 10, N)
    run = root / name
    _write_json(run / "config.json", {
        "config": {"dataset": dataset, "model": model, "defense": defense, "eps": 0.1, "p": "inf", "epochs": 3,
                   "seed": seed, "lr": 0.1},
        "identity": {"config_hash": f"{seed:064x}", "data_fingerprint": "f" * 16},
        "versions": {"trustlab": "0.1.0", "torch": "2.13.0", "python": "3.11.2"},
        "dataset": {"name": dataset, "shape": [1, 8, 8], "num_classes": 10,
                    "sizes": {"train": 1000, "val": 100, "test": N}}})
    rows = [{"idx": i, "y": int(y[i]), "pred": int(y[i]) if rank[i] < clean else int((y[i] + 1) % 10),
             "correct": bool(rank[i] < clean), "confidence": 0.9} for i in range(N)]
    _write_rows(run / "records.jsonl", rows)
    if history:
        hist = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 * e, "train_clean_acc": 0.3 * e,
                 "val_acc": 0.28 * e, "test_acc": 0.27 * e, "generalization_gap": 0.03 * e, "lr": 0.1,
                 "epoch_seconds": 1.5, "train_eps": 0.1} for e in (1, 2, 3)]
        _write_json(run / "summary.json", {"test_acc": clean / N, "train_seconds": 4.5, "epochs": 3,
                                           "history": hist})
    for attack, eps, params, robust in attacks:
        aid = f"{attack}-linf-eps{eps:g}" + "".join(f"-{k.replace('_', '')}{v}" for k, v in sorted(params.items()))
        aid = aid.replace("/", "%")  # a config string may hold any character; a folder name may not hold "/"
        out = run / "attacks" / aid
        threat = {"eps": eps, "p": "inf", "lower": 0.0, "upper": 1.0}
        _write_json(out / "config.json", {"attack": {"attack": attack, **threat, **params}, "name": attack,
                                          "threat": threat, "seed": 0, "subset": None, "run": str(run),
                                          "versions": {"trustlab": "0.1.0", "torch": "2.13.0"}})
        arows = []
        for r in rows:
            ok = bool(rank[r["idx"]] < robust)
            arows.append({**r, "adv_pred": r["y"] if ok else (r["y"] + 3) % 10, "adv_correct": ok,
                          "robust": ok and r["correct"], "dist": eps, "adv_confidence": 0.8})
        _write_rows(out / "records.jsonl", arows)
        _write_json(out / "summary.json", {"attack": attack, "n": N, "clean_acc": clean / N,
                                           "robust_acc": robust / N, "seconds": 0.5, "checkpoint": "epoch_0003"})
        broken = [r["idx"] for r in arows if r["correct"] and not r["adv_correct"]]
        idx = np.array((broken + [i for i in range(N) if i not in broken])[:8], dtype=np.int64)
        x = rng.random((len(idx), 1, 8, 8)).astype(np.float32)
        x_adv = np.clip(x + eps * np.sign(rng.standard_normal(x.shape)), 0, 1).astype(np.float32)
        save_file({"idx": idx, "x": x, "x_adv": x_adv}, str(out / "examples.safetensors"))
    return run


@pytest.fixture()
def runs(tmp_path, monkeypatch) -> list[Path]:
    monkeypatch.setitem(registry.DATASETS, "evil-digits",
                        registry.DatasetInfo("evil-digits", (1, 8, 8), 10, EVIL_CLASSES))
    root = tmp_path / "runs"
    return [
        make_run(root, "standard", defense="none", clean=45, seed=1,
                 attacks=[("fgsm", 0.1, {"loss": "ce"}, 10), ("pgd", 0.1, PGD, 2), ("pgd", 0.2, PGD, 0)]),
        make_run(root, "fgsm-at", defense="fgsm", clean=44, seed=2,
                 attacks=[("fgsm", 0.1, {"loss": "ce"}, 40), ("pgd", 0.1, PGD, 5)]),
        make_run(root, EVIL, defense="pgd", clean=40, seed=3, dataset="evil-digits", model=SCRIPT,
                 attacks=[("fgsm", 0.1, {"loss": "ce"}, 30), ("pgd", 0.1, PGD, 25),
                          ("pgd", 0.1, {**PGD, "steps": 20, "loss": SCRIPT}, 24), ("pgd", 0.2, PGD, 15)]),
    ]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_safe_html(page: str) -> None:
    """No script, no event handler, no external or javascript: URL; images only as inline PNG."""
    parser = _Tags()
    parser.feed(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "nav", "ul", "li",
               "a", "main", "section", "figure", "img", "figcaption", "table", "caption", "thead", "tbody", "tr",
               "th", "td"}
    for tag, attrs in parser.tags:
        assert tag in allowed, f"unexpected tag <{tag}>"
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
        if tag == "a":
            assert attrs["href"].startswith("#")
    assert "\x1b" not in page and not re.search(r"https?://(?!evil\.example)", page)


def test_report_has_every_section_and_each_figure_is_followed_by_its_table(runs, tmp_path):
    out = tmp_path / "report"
    page_path = build_report(runs, out, title="lecture <report>")
    assert page_path == out / "report.html"
    page = page_path.read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in page
    assert page.count("<figure>") >= 9  # matrix, curves, 3 per-class, 3 example grids, 3 training
    assert page.count("<figure>") == page.count("</figure>\n<table>")
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "matrix.png" in figures and "curves-linf.png" in figures
    assert all((out / "figures" / f).read_bytes()[:4] == b"\x89PNG" for f in figures)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"figures/{f}" in md for f in figures)
    assert "lecture &lt;report&gt;" in page and r"lecture \<report\>" in md
    assert_safe_html(page)


def test_report_numbers_flags_and_hyperparameters(runs, tmp_path):
    """EVAL-20: threat model, every attack hyperparameter, n, clean/per-attack/worst accuracy, flags, versions,
    config hash; the numbers come from the records."""
    out = tmp_path / "report"
    build_report(runs, out, eps=0.1)
    data = json.loads((out / "report.json").read_text())
    matrix = {r["run"]: r for r in data["matrix"]}
    assert matrix["standard"]["clean"] == 0.9 and matrix["standard"]["pgd"] == 0.04
    assert matrix[EVIL]["pgd"] == 24 / N and matrix[EVIL]["worst"] == 24 / N
    # the 10- and 20-step PGD of the third run use different losses, so they are not a convergence pair
    assert [(f["run"], f["code"]) for f in data["flags"]] == [("fgsm-at", "catastrophic_overfitting")]
    md = (out / "report.md").read_text(encoding="utf-8")
    for needle in ["catastrophic\\_overfitting", "step\\_size=0.025", "restarts=1", "random\\_start=True",
                   "steps=10", "loss=ce", "torch version", "python version", "trustlab version", "config hash",
                   f"{1:064x}", "| n |", "worst\\_acc", "linf", "| lower |", "robust\\_acc", "clean\\_acc"]:
        assert needle in md, needle
    attacks = data["runs"][0]["attacks"]
    assert sorted((a["attack"], a["eps"], a["n"], a["robust_acc"]) for a in attacks) == [
        ("fgsm", 0.1, N, 0.2), ("pgd", 0.1, N, 0.04), ("pgd", 0.2, N, 0.0)]
    assert all(a["params"] == PGD for a in attacks if a["attack"] == "pgd")
    curves = [r for r in data["curves"] if r["curve"] == "standard: pgd"]
    assert [r["eps"] for r in curves] == [0.0, 0.1, 0.2] and [r["acc"] for r in curves] == [0.9, 0.04, 0.0]


def test_user_strings_are_escaped_in_html_and_markdown(runs, tmp_path):
    """SEC-12: run names, class names and config strings with <script>, Markdown links and ANSI codes."""
    out = tmp_path / "report"
    page = build_report(runs, out).read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img src=x" not in page
    assert escape(SCRIPT) in page and escape(EVIL) in page  # shown, as text
    assert "[31m" not in page and "[31m" not in md  # the whole ANSI sequence is removed, not just ESC
    assert escape(EVIL_CLASSES[1]) in page  # a class name
    assert "\x1b" not in md and not re.search(r"(?<!\\)<(script|img)", md)  # only as \<script\>
    assert "[click](" not in md and r"\[click\](javascript:alert(2))" in md
    assert r"\<script\>alert(1)\</script\>" in md
    assert_safe_html(page)
    data = json.loads((out / "report.json").read_text())
    assert data["runs"][2]["name"] == EVIL  # the data keeps the real name; only rendering escapes


def test_empty_sections_say_why_and_extra_sections_are_added(tmp_path):
    run = make_run(tmp_path / "runs", "bare", defense="none", clean=30, attacks=[], history=False)
    extra = Section("trajectories", "Optimizer <trajectories>", "<p>paths</p>\n", "paths\n")
    out = tmp_path / "report"
    page = build_report([run], out, extra_sections=[extra]).read_text(encoding="utf-8")
    for sid in (*SECTION_IDS, "trajectories"):
        assert f'<section id="{sid}">' in page
    assert "No attack evaluations" in page and "No example grids" in page and "No training history" in page
    assert "Optimizer &lt;trajectories&gt;" in page and "<p>paths</p>" in page
    with pytest.raises(ValueError, match="unique"):
        build_report([run], out, extra_sections=[Section("matrix", "again", "", "")])
    with pytest.raises(ValueError, match="section id"):
        Section("bad id", "t", "", "")
    with pytest.raises(FileNotFoundError, match="missing"):
        build_report([tmp_path / "missing"], out)


def test_html_helpers_escape_and_check_inputs():
    table = html_table([{"name": SCRIPT, "acc": 0.5}], ["name", "acc"], percent={"acc"})
    assert "&lt;script&gt;" in table and "50.0%" in table and "<script>" not in table
    with pytest.raises(ValueError, match="PNG"):
        figure_html(b"GIF89a", alt="x")


# --- headless Chromium ---------------------------------------------------------------------------------------

def test_chromium_detects_console_errors(render_in_chromium, tmp_path):
    """The harness itself: a page that logs an error is caught (so a clean report's silence means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p id='x'>x</p><script>console.error('boom'); nope();</script>"
                   "</body></html>")
    dom, console = render_in_chromium(bad, tmp_path)
    assert 'id="x"' in dom and any("boom" in c for c in console) and any("Uncaught" in c for c in console)


def test_report_renders_in_chromium_without_console_errors(render_in_chromium, runs, tmp_path):
    page = build_report(runs, tmp_path / "report")
    dom, console = render_in_chromium(page, tmp_path)
    assert console == []
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom
    assert dom.count("<img") >= 9 and "<script" not in dom.lower()
    assert math.isfinite(len(dom)) and escape(EVIL) in dom


def test_training_section_shows_validation_pgd_and_the_kept_epoch(tmp_path):
    """A keep_best run: the history table carries val_pgd_acc and the caption names the kept epoch."""
    run = make_run(tmp_path / "runs", "kept", defense="fgsm-rs", clean=80, attacks=[])
    summary = json.loads((run / "summary.json").read_text())
    for h, v in zip(summary["history"], (0.41, 0.77, 0.52)):
        h["val_pgd_acc"] = v
    summary["selected_epoch"] = 2
    _write_json(run / "summary.json", summary)
    out = tmp_path / "report"
    build_report([run], out, eps=0.1)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "val\\_pgd\\_acc" in md and "| 77.0% |" in md
    assert "kept the weights of epoch 2" in md
    summary["selected_epoch"] = 3  # the last epoch: nothing to point out
    _write_json(run / "summary.json", summary)
    build_report([run], tmp_path / "report2", eps=0.1)
    assert "kept the weights" not in (tmp_path / "report2" / "report.md").read_text(encoding="utf-8")
