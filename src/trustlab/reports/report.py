"""``build_report``: rebuild every table, plot and flag of a set of runs from their records alone.

Writes ``report.md``, ``report.html`` (one self-contained page), ``report.json`` (the numbers behind both) and
PNG figures under ``figures/``. No model is loaded. Each figure is followed by a table built from the same metric
output, so the picture and the numbers cannot disagree.

Reference:
    Carlini et al. 2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705 (describe every attack with
    all its hyperparameters); reliability-tests.md EVAL-05, EVAL-11, EVAL-20, SEC-12.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.runs.atomic import atomic_write_bytes, atomic_write_text
from trustlab.reports.diagnosis import CHECKS, Flag, diagnose
from trustlab.reports import plots
from trustlab.reports.html import Section, escape, figure_html, html_table, paragraph, render_page
from trustlab.reports.metrics import (
    EpsCurve, accuracy, accuracy_vs_eps, attack_families, default_threat, per_class_accuracy, robustness_matrix,
    same_eps, worst_case,
)
from trustlab.runs.records import write_json
from trustlab.reports.runs import AttackView, RunView, load_examples, load_runs, norm_label
from trustlab.reports.tables import escape_markdown, markdown_table, matrix_spec
from trustlab.threat import parse_p

__all__ = ["build_report", "Section", "SECTION_IDS"]

log = logging.getLogger(__name__)
SECTION_IDS = ("matrix", "diagnosis", "curves", "per-class", "examples", "training", "runs")
_HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "train_clean_acc", "val_acc", "val_pgd_acc", "test_acc",
                    "generalization_gap", "train_eps", "lr", "epoch_seconds")
_HISTORY_PERCENT = {"train_acc", "train_clean_acc", "val_acc", "val_pgd_acc", "test_acc", "generalization_gap"}
_HISTORY_FMT = {"train_loss": ".4f", "train_eps": "g", "lr": ".3g", "epoch": "g"}


def build_report(
    run_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    eps: float | None = None,
    p: float | str | None = None,
    title: str = "trustlab report",
    extra_sections: Sequence[Section] = (),
    max_examples: int = 4,
) -> Path:
    """Build the report of ``run_paths`` into ``out_dir``.

    Args:
        run_paths: training run folders (each with ``config.json``, ``records.jsonl`` and ``attacks/``).
        out_dir: where ``report.md``, ``report.html``, ``report.json`` and ``figures/`` go (created).
        eps: the budget of the robustness matrix, per-class bars and example grids; defaults to the one most
            runs were evaluated at.
        p: its norm (``"inf"``, ``2``); defaults to the most common at ``eps``.
        title: the report's title.
        extra_sections: more sections, appended after the built-in ones (ids must not clash).
        max_examples: adversarial examples shown per run.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: no runs, ``max_examples < 1``, or a section id used twice.
        FileNotFoundError: a run folder or one of its required files is missing.
    """
    if len(run_paths) == 0:
        raise ValueError("run_paths is empty; give at least one run folder")
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    runs = load_runs(list(run_paths))
    p = parse_p(p) if p is not None else None
    threat = default_threat(runs, eps) if eps is None or p is None else (float(eps), p)
    if threat is None and eps is not None:
        threat = (float(eps), p if p is not None else math.inf)
    out_dir = Path(out_dir)  # created when the first file is written, so a failed build leaves no empty folder
    flags = diagnose(runs)
    matrix = robustness_matrix(runs, eps=threat[0] if threat else None, p=threat[1] if threat else None)
    data: dict[str, Any] = {"title": title, "matrix": matrix, "flags": [asdict(f) for f in flags]}
    if threat:
        data["threat"] = {"eps": threat[0], "p": norm_label(threat[1])}
    sections = [
        _matrix_section(runs, matrix, threat, out_dir),
        _diagnosis_section(flags),
        _curves_section(runs, out_dir, data),
        _per_class_section(runs, threat, out_dir),
        _examples_section(runs, threat, out_dir, max_examples),
        _training_section(runs, out_dir),
        _runs_section(runs, flags, data),
        *extra_sections,
    ]
    subtitle = f"{len(runs)} run(s); rebuilt from records.jsonl files, no model loaded"
    page = render_page(title, sections, subtitle=subtitle)  # checks section ids before anything is written
    md = [f"# {escape_markdown(title)}\n", f"{escape_markdown(subtitle)}\n"]
    md += [f'<a id="{s.id}"></a>\n\n## {escape_markdown(s.title)}\n\n{s.markdown_body}' for s in sections]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    write_json(out_dir / "report.json", data)
    return atomic_write_text(out_dir / "report.html", page)


class _Body:
    """A section's content, accumulated in HTML and Markdown side by side."""

    def __init__(self, out_dir: Path | None = None) -> None:
        self.out_dir, self.html, self.md = out_dir, [], []  # out_dir: where figure() writes (figures/)

    def text(self, s: str, css_class: str | None = None) -> None:
        self.html.append(paragraph(s, css_class=css_class))
        self.md.append(escape_markdown(s) + "\n")

    def heading(self, s: str) -> None:
        self.html.append(f"<h3>{escape(s)}</h3>\n")
        self.md.append(f"### {escape_markdown(s)}\n")

    def bullets(self, items: Sequence[str]) -> None:
        self.html.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>\n")
        self.md.append("".join(f"- {escape_markdown(i)}\n" for i in items))

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str], *, floatfmt: Any = ".1f",
              percent: Any = True) -> None:
        self.html.append(html_table(rows, columns, floatfmt=floatfmt, percent=percent))
        self.md.append(markdown_table(rows, columns, floatfmt=floatfmt, percent=percent))

    def figure(self, png: bytes, name: str, *, alt: str, caption: str) -> None:
        if self.out_dir is None:
            raise ValueError(f"this section has no output folder to write the figure {name!r} to")
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out_dir / "figures" / name, png)
        self.html.append(figure_html(png, alt=alt, caption=caption))
        self.md.append(f"![{escape_markdown(alt)}](figures/{name})\n\n*{escape_markdown(caption)}*\n")

    def section(self, id: str, title: str) -> Section:
        return Section(id, title, "".join(self.html), "\n".join(self.md))


def _slug(i: int, *parts: str) -> str:
    """A safe, unique file name stem: ``03-run-name-attack``."""
    text = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") for s in parts)
    return f"{i:02d}-{text[:80] or 'x'}"


def _threat_text(threat: tuple[float, float] | None) -> str:
    return "no threat model" if threat is None else f"{norm_label(threat[1])} eps={threat[0]:g}"


def _attacks_at(run: RunView, threat: tuple[float, float] | None) -> list[AttackView]:
    if threat is None:
        return []
    return [a for a in run.attacks if same_eps(a.eps, threat[0]) and a.p == threat[1]]


def _matrix_section(runs: list[RunView], matrix: list[dict], threat, out_dir: Path) -> Section:
    body = _Body(out_dir)
    if not any(run.attacks for run in runs):
        body.text("No attack evaluations were found (no RUN/attacks/<id>/ folders), so the matrix shows clean "
                  "accuracy only. Run `trustlab attack` on each run to fill it.")
    spec = matrix_spec(matrix)
    shown = [c for c in spec["columns"] if c in spec["percent"] and any(r.get(c) is not None for r in matrix)]
    if shown:
        png = plots.plot_matrix(matrix, shown, title=f"robust accuracy (%) at {_threat_text(threat)}")
        body.figure(png, "matrix.png", alt="robustness matrix heatmap",
                    caption=f"Accuracy (%) of each trained model (rows) under each evaluation (columns) at "
                            f"{_threat_text(threat)}; worst = per-example worst case over every attack in the row "
                            "(an example counts only if it survives all of them). Grey: not evaluated.")
    body.table(matrix, spec["columns"], floatfmt=spec["floatfmt"], percent=spec["percent"])
    notes = [f"{r['run']}: {r['notes']}" for r in matrix if r.get("notes")]
    if notes:
        body.bullets(notes)
    return body.section("matrix", "Robustness matrix")


def _diagnosis_section(flags: list[Flag]) -> Section:
    body = _Body()
    if flags:
        body.text(f"{len(flags)} flag(s) raised. A flag marks numbers to distrust, not a failed run.")
        rows = [{**asdict(f), "evidence": json.dumps(f.evidence, sort_keys=True)} for f in flags]
        body.table(rows, ["severity", "code", "run", "message", "evidence"], percent=False)
    else:
        body.text("No flag raised: every check below passed on every run (checks need the attacks they compare, "
                  "so a run with few evaluations is checked less).")
    body.text("Checks run on the records:")
    body.bullets([f"{code}: {desc}" for code, desc in CHECKS.items()])
    return body.section("diagnosis", "Diagnosis")


def _curves_section(runs: list[RunView], out_dir: Path, data: dict[str, Any]) -> Section:
    body = _Body(out_dir)
    by_norm: dict[float, dict[str, EpsCurve]] = {}
    problems = []
    for run in runs:
        for (name, p), views in attack_families(run.attacks).items():
            try:
                by_norm.setdefault(p, {})[f"{run.name}: {name}"] = accuracy_vs_eps(views)
            except ValueError as exc:  # evaluations on disjoint example subsets: nothing to compare
                problems.append(f"{run.name}: {name} ({norm_label(p)}): {exc}")
    if not by_norm:
        body.text("No attack evaluations, so there are no accuracy-vs-eps curves.")
    rows_all = []
    for i, (p, curves) in enumerate(sorted(by_norm.items())):
        png = plots.plot_eps_curves(curves, xlabel=f"eps ({norm_label(p)})",
                                    title=f"robust accuracy vs eps ({norm_label(p)})")
        body.figure(png, f"curves-{norm_label(p)}.png", alt=f"accuracy vs eps, {norm_label(p)}",
                    caption="Solid: robust accuracy with each success carried to every larger eps (the same x_adv "
                            "is feasible there), so the curve cannot rise. Dashed, where different: the raw "
                            "per-eps numbers. eps=0 is clean accuracy; several configurations at one eps are "
                            "combined per example.")
        rows = [{"curve": label, "eps": float(e), "acc": float(a), "raw": float(r), "n": c.n}
                for label, c in curves.items() for e, a, r in zip(c.eps, c.acc, c.raw)]
        body.table(rows, ["curve", "eps", "acc", "raw", "n"], floatfmt={"eps": "g"}, percent={"acc", "raw"})
        rows_all += [{**r, "p": norm_label(p)} for r in rows]
    if problems:
        body.bullets(problems)
    data["curves"] = rows_all
    return body.section("curves", "Accuracy vs eps")


def _per_class_section(runs: list[RunView], threat, out_dir: Path) -> Section:
    body = _Body(out_dir)
    for i, run in enumerate(runs):
        body.heading(run.name)
        names, k = run.class_names, run.num_classes
        series = {f"clean (n={len(run.records)})": per_class_accuracy(run.records, k, "correct")}
        counts = {"n_clean": np.bincount([int(r["y"]) for r in run.records], minlength=k)}
        views = _attacks_at(run, threat)
        if views:
            cases = worst_case({v.id: v.records for v in views})
            series[f"worst case at {_threat_text(threat)} (n={len(cases)})"] = per_class_accuracy(cases, k, "robust")
            counts["n_robust"] = np.bincount([int(r["y"]) for r in cases], minlength=k)
        else:
            body.text(f"No attack evaluation of this run at {_threat_text(threat)}: clean accuracy only.")
        png = plots.plot_per_class(names, series, title=f"per-class accuracy: {run.name}")
        body.figure(png, f"per-class-{_slug(i, run.name)}.png", alt=f"per-class accuracy of {run.name}",
                    caption="Accuracy within each true class: clean, and robust as the per-example worst case over "
                            "the run's attacks at the matrix threat model.")
        accs = list(series.values())
        rows = [{"class": names[c], "clean": accs[0][c], "robust": accs[1][c] if len(accs) > 1 else None,
                 **{key: int(v[c]) for key, v in counts.items()}} for c in range(k)]
        body.table(rows, ["class", "clean", "robust", *counts], percent={"clean", "robust"})
    return body.section("per-class", "Per-class accuracy")


def _examples_section(runs: list[RunView], threat, out_dir: Path, max_examples: int) -> Section:
    body = _Body(out_dir)
    shown = 0
    for i, run in enumerate(runs):
        candidates = [a for a in (_attacks_at(run, threat) or run.attacks) if a.examples_path.is_file()]
        if not candidates:
            continue
        view = min(candidates, key=lambda a: (accuracy(a.records, "robust"), -a.eps))
        grid = load_examples(view)
        by_idx = {int(r["idx"]): r for r in view.records}
        take = [j for j, idx in enumerate(grid["idx"].tolist()) if int(idx) in by_idx][:max_examples]
        if not take:
            continue
        body.heading(f"{run.name}: {view.id}")
        names = run.class_names
        rows = [_example_row(by_idx[int(grid["idx"][j])], names) for j in take]
        titles = [(f"clean: {r['clean_pred']} {r['clean_conf']:.1%}", f"adv: {r['adv_pred']} {r['adv_conf']:.1%}")
                  for r in rows]
        lower, upper = float(view.threat.get("lower", 0.0)), float(view.threat.get("upper", 1.0))
        x, x_adv = grid["x"][take], grid["x_adv"][take]
        scale = plots.delta_scale(x, x_adv, lower=lower, upper=upper)
        png = plots.plot_examples(x, x_adv, titles, lower=lower, upper=upper,
                                  title=f"{run.name}: {view.name} {_threat_text((view.eps, view.p))}")
        body.figure(png, f"examples-{_slug(i, run.name, view.id)}.png", alt=f"adversarial examples of {run.name}",
                    caption=f"Each row: the clean image, the perturbation x_adv - x amplified x{scale:.3g} for "
                            "visibility (mid-grey is no change), and the adversarial image, each titled with the "
                            "predicted class and its confidence. Successful attacks first.")
        body.table(rows, ["idx", "true", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "dist", "broken"],
                   floatfmt={"dist": ".4f"}, percent={"clean_conf", "adv_conf"})
        shown += 1
    if not shown:
        body.text("No example grids: no attack evaluation wrote examples.safetensors.")
    return body.section("examples", "Adversarial examples")


def _example_row(r: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    def name(label: Any) -> str:
        return names[int(label)] if 0 <= int(label) < len(names) else str(label)

    return {"idx": int(r["idx"]), "true": name(r["y"]), "clean_pred": name(r["pred"]),
            "clean_conf": float(r.get("confidence", math.nan)), "adv_pred": name(r["adv_pred"]),
            "adv_conf": float(r.get("adv_confidence", math.nan)), "dist": r.get("dist"),
            "broken": bool(r["correct"]) and not bool(r["adv_correct"])}


def _training_section(runs: list[RunView], out_dir: Path) -> Section:
    body = _Body(out_dir)
    shown = 0
    for i, run in enumerate(runs):
        history = run.summary.get("history") or []
        if not history:
            continue
        body.heading(run.name)
        selected = run.summary.get("selected_epoch")
        png = plots.plot_training(history, title=f"training: {run.name} ({run.label})", selected=selected)
        kept = (f" The run kept the weights of epoch {selected}, its best validation PGD accuracy at full eps."
                if selected is not None and selected != history[-1].get("epoch") else "")
        body.figure(png, f"training-{_slug(i, run.name)}.png", alt=f"training curves of {run.name}",
                    caption="Accuracy per epoch (train on the inputs trained on, i.e. adversarial ones for "
                            "adversarial training; clean train; validation; validation PGD-10 at the epoch's "
                            "eps; test) and the training loss." + kept)
        columns = [c for c in _HISTORY_COLUMNS if any(c in h for h in history)]
        body.table(history, columns, floatfmt=_HISTORY_FMT, percent=_HISTORY_PERCENT)
        shown += 1
    if not shown:
        body.text("No training history: no run has a summary.json with per-epoch history.")
    return body.section("training", "Training curves")


def _runs_section(runs: list[RunView], flags: list[Flag], data: dict[str, Any]) -> Section:
    body = _Body()
    data["runs"] = []
    for run in runs:
        body.heading(run.name)
        versions = run.config.get("versions", {})
        facts = {"path": str(run.path), "dataset": run.dataset, "n test": len(run.records),
                 "clean accuracy": f"{100 * accuracy(run.records):.2f}%", "training": run.label,
                 "config hash": run.config_hash, "train seconds": run.summary.get("train_seconds"),
                 **{f"{k} version": v for k, v in versions.items()}}
        body.table([{"field": k, "value": v} for k, v in facts.items()], ["field", "value"], floatfmt="g",
                   percent=False)
        body.text("Training configuration:")
        cfg = run.train_config
        body.table([{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                    for k, v in cfg.items()], ["field", "value"], floatfmt="g", percent=False)
        attack_rows = [_attack_row(a) for a in run.attacks]
        if attack_rows:
            body.text("Attack evaluations (every hyperparameter as recorded in the evaluation's config.json):")
            body.table(attack_rows, ["id", "attack", "p", "eps", "lower", "upper", "params", "seed", "n",
                                     "clean_acc", "robust_acc", "seconds"],
                       floatfmt={"eps": "g", "lower": "g", "upper": "g", "seconds": ".1f"},
                       percent={"clean_acc", "robust_acc"})
            body.text("Worst case over every attack at each threat model (per example):")
            body.table(_worst_rows(run), ["p", "eps", "attacks", "n", "worst_acc"], floatfmt={"eps": "g"},
                       percent={"worst_acc"})
        else:
            body.text("No attack evaluations for this run.")
        own = [f"[{f.severity}] {f.code}: {f.message}" for f in flags if f.run == run.name]
        body.text("Flags: " + ("none." if not own else f"{len(own)}."))
        if own:
            body.bullets(own)
        data["runs"].append({"name": run.name, "path": str(run.path), "config": cfg, "config_hash": run.config_hash,
                             "versions": versions, "n": len(run.records), "clean_acc": accuracy(run.records),
                             "attacks": attack_rows, "worst_case": _worst_rows(run)})
    return body.section("runs", "Runs and hyperparameters")


def _attack_row(a: AttackView) -> dict[str, Any]:
    return {"id": a.id, "attack": a.name, "p": a.norm, "eps": a.eps, "lower": a.threat.get("lower"),
            "upper": a.threat.get("upper"), "params": dict(a.params), "seed": a.seed, "n": a.n,
            "clean_acc": accuracy(a.records, "correct"), "robust_acc": accuracy(a.records, "robust"),
            "seconds": a.summary.get("seconds")}


def _worst_rows(run: RunView) -> list[dict[str, Any]]:
    rows = []
    for a in run.attacks:
        if any(same_eps(r["eps"], a.eps) and r["p"] == a.norm for r in rows):
            continue
        views = _attacks_at(run, (a.eps, a.p))
        cases = worst_case({v.id: v.records for v in views})
        rows.append({"p": a.norm, "eps": a.eps, "attacks": [v.id for v in views], "n": len(cases),
                     "worst_acc": accuracy(cases, "robust")})
    return rows
