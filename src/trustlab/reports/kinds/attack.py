"""The ``attack`` kind: one record set per evaluation ``RUN/attacks/<id>/`` (one row per attacked example).

It fills the matrix's attack columns and builds the robustness matrix, the diagnosis, the accuracy-vs-eps curves,
the per-class accuracy, the adversarial example grids, and each run's attack tables in the runs section (with, for
an ensemble evaluation, its members' table from ``summary.json``: attacked, broken and seconds per member).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from trustlab.reports import plots
from trustlab.reports.body import Body, Fragment, slug
from trustlab.reports.diagnosis import CHECKS, diagnose, diagnose_run
from trustlab.reports.kinds import Cell, RecordKind, ReportContext, ReportPart
from trustlab.reports.metrics import (
    EpsCurve, accuracy, accuracy_vs_eps, attack_families, per_class_accuracy, robustness_matrix, same_eps,
    select_attacks, worst_case,
)
from trustlab.reports.runs import ATTACK_KEYS, ATTACK_KIND, AttackView, RunView, attack_views, load_examples, norm_label
from trustlab.reports.tables import matrix_spec

__all__ = ["KIND", "MATRIX_ATTACKS"]

MATRIX_ATTACKS = ("fgsm", "pgd")  # the matrix's attack columns by default (Madry et al. 2018, Table 1)
MEMBER_COLUMNS = ("member", "attacked", "broken", "seconds")  # an ensemble's per-member table


def _columns(runs: Sequence[RunView]) -> tuple[str, ...]:
    """FGSM and PGD, then every other attack the runs were evaluated with (the ensemble last), so that the
    matrix's worst case covers every evaluation: a masked model's PGD number is never its headline."""
    others = dict.fromkeys(a.name for run in runs for a in run.attacks if a.name not in MATRIX_ATTACKS)
    return MATRIX_ATTACKS + tuple(sorted(others, key=lambda name: (name == "ensemble", name)))


def _metrics(run: RunView, eps: float | None, p: float | None) -> dict[str, Cell]:
    """One cell per attack name evaluated at (eps, p): the per-example worst case of its configurations.

    Only the evaluations on the most examples count for a cell: a check run on a subset (such as PGD with twice
    the steps for the convergence flag) is left out and named in the notes.
    """
    if eps is None:
        return {}
    cells = {}
    for name in dict.fromkeys(a.name for a in run.attacks):
        views = select_attacks(run, name, eps, p)
        if not views:
            continue
        notes = []
        n_max = max(v.n for v in views)
        partial = [v.id for v in views if v.n < n_max]
        views = [v for v in views if v.n == n_max]
        if partial:
            notes.append(f"{name}: {', '.join(partial)} ran on fewer examples and is left out of the cell")
        cases = {v.id: v.records for v in views}
        if len(views) > 1:
            notes.append(f"{name}: per-example worst case of {len(views)} configurations "
                         f"({', '.join(v.id for v in views)})")
        cells[name] = Cell(accuracy(worst_case(cases), "robust"), cases, tuple(notes))
    return cells


def _threat_text(threat: tuple[float, float] | None) -> str:
    return "no threat model" if threat is None else f"{norm_label(threat[1])} eps={threat[0]:g}"


def _attacks_at(run: RunView, threat: tuple[float, float] | None) -> list[AttackView]:
    if threat is None:
        return []
    return [a for a in run.attacks if same_eps(a.eps, threat[0]) and a.p == threat[1]]


def _matrix_section(ctx: ReportContext) -> ReportPart:
    runs, threat = ctx.runs, ctx.threat
    matrix = robustness_matrix(runs, eps=threat[0] if threat else None, p=threat[1] if threat else None)
    body = Body(ctx.out_dir)
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
    return ReportPart(body.section("matrix", "Robustness matrix"), {"matrix": matrix})


def _diagnosis_section(ctx: ReportContext) -> ReportPart:
    flags = diagnose(ctx.runs)
    body = Body()
    if flags:
        body.text(f"{len(flags)} flag(s) raised. A flag marks numbers to distrust, not a failed run.")
        rows = [{**asdict(f), "evidence": json.dumps(f.evidence, sort_keys=True)} for f in flags]
        body.table(rows, ["severity", "code", "run", "message", "evidence"], percent=False)
    else:
        body.text("No flag raised: every check below passed on every run (checks need the attacks they compare, "
                  "so a run with few evaluations is checked less).")
    body.text("Checks run on the records:")
    checks = {**CHECKS, **{code: desc for kind in ctx.kinds for code, desc in kind.checks.items()}}
    body.bullets([f"{code}: {desc}" for code, desc in checks.items()])
    model_checks = _model_checks(ctx.runs)
    if model_checks:
        body.text("Checks run on the model at attack time, on the first inputs of each evaluation (checks.json):")
        body.bullets([f"{code}: {desc}" for code, desc in model_checks.items()])
    return ReportPart(body.section("diagnosis", "Diagnosis"), {"flags": [asdict(f) for f in flags]})


def _model_checks(runs: Sequence[RunView]) -> dict[str, str]:
    """The model-level checks that any evaluation recorded, code -> description, as written in its checks.json."""
    found: dict[str, str] = {}
    for run in runs:
        for a in run.attacks:
            found.update({str(k): str(v) for k, v in a.checks.get("checks", {}).items()})
    return found


def _curves_section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    by_norm: dict[float, dict[str, EpsCurve]] = {}
    problems = []
    for run in ctx.runs:
        for (name, p), views in attack_families(run.attacks).items():
            try:
                by_norm.setdefault(p, {})[f"{run.name}: {name}"] = accuracy_vs_eps(views)
            except ValueError as exc:  # evaluations on disjoint example subsets: nothing to compare
                problems.append(f"{run.name}: {name} ({norm_label(p)}): {exc}")
    if not by_norm:
        body.text("No attack evaluations, so there are no accuracy-vs-eps curves.")
    rows_all = []
    for p, curves in sorted(by_norm.items()):
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
    return ReportPart(body.section("curves", "Accuracy vs eps"), {"curves": rows_all})


def _per_class_section(ctx: ReportContext) -> ReportPart:
    body, threat = Body(ctx.out_dir), ctx.threat
    for i, run in enumerate(ctx.runs):
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
        body.figure(png, f"per-class-{slug(i, run.name)}.png", alt=f"per-class accuracy of {run.name}",
                    caption="Accuracy within each true class: clean, and robust as the per-example worst case over "
                            "the run's attacks at the matrix threat model.")
        accs = list(series.values())
        rows = [{"class": names[c], "clean": accs[0][c], "robust": accs[1][c] if len(accs) > 1 else None,
                 **{key: int(v[c]) for key, v in counts.items()}} for c in range(k)]
        body.table(rows, ["class", "clean", "robust", *counts], percent={"clean", "robust"})
    return ReportPart(body.section("per-class", "Per-class accuracy"))


def _examples_section(ctx: ReportContext) -> ReportPart:
    body, threat = Body(ctx.out_dir), ctx.threat
    shown = 0
    for i, run in enumerate(ctx.runs):
        candidates = [a for a in (_attacks_at(run, threat) or run.attacks) if a.examples_path.is_file()]
        if not candidates:
            continue
        view = min(candidates, key=lambda a: (accuracy(a.records, "robust"), -a.eps))
        grid = load_examples(view)
        by_idx = {int(r["idx"]): r for r in view.records}
        take = [j for j, idx in enumerate(grid["idx"].tolist()) if int(idx) in by_idx][:ctx.max_examples]
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
        body.figure(png, f"examples-{slug(i, run.name, view.id)}.png", alt=f"adversarial examples of {run.name}",
                    caption=f"Each row: the clean image, the perturbation x_adv - x amplified x{scale:.3g} for "
                            "visibility (mid-grey is no change), and the adversarial image, each titled with the "
                            "predicted class and its confidence. Successful attacks first.")
        body.table(rows, ["idx", "true", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "dist", "broken"],
                   floatfmt={"dist": ".4f"}, percent={"clean_conf", "adv_conf"})
        shown += 1
    if not shown:
        body.text("No example grids: no attack evaluation wrote examples.safetensors.")
    return ReportPart(body.section("examples", "Adversarial examples"))


def _example_row(r: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    def name(label: Any) -> str:
        return names[int(label)] if 0 <= int(label) < len(names) else str(label)

    return {"idx": int(r["idx"]), "true": name(r["y"]), "clean_pred": name(r["pred"]),
            "clean_conf": float(r.get("confidence", math.nan)), "adv_pred": name(r["adv_pred"]),
            "adv_conf": float(r.get("adv_confidence", math.nan)), "dist": r.get("dist"),
            "broken": bool(r["correct"]) and not bool(r["adv_correct"])}


def _run_part(run: RunView, ctx: ReportContext) -> Fragment:
    """The run's attack evaluations with every hyperparameter, its worst cases, and its flags."""
    body = Body()
    attack_rows = [_attack_row(a) for a in run.attacks]
    members = {a.id: rows for a in run.attacks if (rows := _member_rows(a))}
    if attack_rows:
        body.text("Attack evaluations (every hyperparameter as recorded in the evaluation's config.json):")
        body.table(attack_rows, ["id", "attack", "p", "eps", "lower", "upper", "params", "seed", "n",
                                 "clean_acc", "robust_acc", "seconds"],
                   floatfmt={"eps": "g", "lower": "g", "upper": "g", "seconds": ".1f"},
                   percent={"clean_acc", "robust_acc"})
        for a, rows in members.items():
            body.text(f"Ensemble {a}: its members in the order they ran, each on the examples still robust "
                      "(attacked) and breaking some of them (broken); seconds summed over the batches:")
            body.table(rows, list(MEMBER_COLUMNS), floatfmt={"seconds": ".2f"}, percent=False)
        body.text("Worst case over every attack at each threat model (per example):")
        body.table(_worst_rows(run), ["p", "eps", "attacks", "n", "worst_acc"], floatfmt={"eps": "g"},
                   percent={"worst_acc"})
    else:
        body.text("No attack evaluations for this run.")
    own = [f"[{f.severity}] {f.code}: {f.message}" for f in diagnose_run(run)]
    body.text("Flags: " + ("none." if not own else f"{len(own)}."))
    if own:
        body.bullets(own)
    data = {"attacks": attack_rows, "worst_case": _worst_rows(run)}
    if members:  # only ensemble evaluations carry it, so other reports stay as they were
        data["ensemble_members"] = members
    return body.part(data)


def _member_rows(a: AttackView) -> list[dict[str, Any]]:
    """An ensemble evaluation's per-member counts and times as its summary.json recorded them; [] otherwise."""
    members = a.summary.get("members")
    if not isinstance(members, list):
        return []
    return [{"member": m.get("name"), "attacked": m.get("attacked"), "broken": m.get("broken"),
             "seconds": m.get("seconds")} for m in members if isinstance(m, Mapping)]


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


KIND = RecordKind(
    name=ATTACK_KIND,
    keys=ATTACK_KEYS,
    folder="attacks",
    load=attack_views,
    columns=_columns,
    metrics=_metrics,
    sections=(("matrix", _matrix_section), ("diagnosis", _diagnosis_section), ("curves", _curves_section),
              ("per-class", _per_class_section), ("examples", _examples_section)),
    run_part=_run_part,
    order=10,
    report_when_absent=True,  # a run without evaluations still gets these sections, saying how to fill them
)
