"""The ``smoothing`` kind: one record set per randomized-smoothing evaluation ``RUN/smoothing/<id>/``
(``trustlab smooth certify|predict``).

A row holds ``idx, y, prediction, correct`` (and ``abstain, pA_lower, pvalue, radius, seconds``); the set's
``config.json`` names the mode, noise, sigma, n0, n and alpha. The kind adds the section "Randomized smoothing":
per run, certified accuracy against the radius for each sigma (a plot), a Markdown table of certified accuracy at
radii 0, 0.25, ..., 2.0 with the average certified radius, and the statement of what is guaranteed and what is
not (RS-10). Uniform and Laplace sets (l_1 radii) get their own figure. Gaussian (l_2) sets also get their l_inf
view: certified accuracy at l_inf radii ``eps`` (the l_2 one at ``eps sqrt(d)``, ``d`` from the run's dataset shape)
and the figure of how ``R / sqrt(d)`` shrinks with ``d`` (:func:`trustlab.smoothing.plot_linf_shrinkage`); with
several runs, one more figure puts every run's Gaussian curves together (one model per sigma). It adds no matrix
column: a smoothing radius certifies the smoothed classifier ``g``, not the run's model, so it does not belong in
that model's row.

Metrics (RS-10). Certified accuracy at radius ``r`` is the mean over examples of ``correct and radius >= r``;
``correct`` is ``prediction == y``, so abstentions count as incorrect. The average certified radius (Zhai et al.
2020) is the mean of ``radius`` over examples, counting 0 for incorrect ones.

Reference:
    Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918 (Sec. 3.2, Fig. 1 and Table 1); Zhai et al.,
    "MACER", ICLR 2020 (ACR); Voracek & Hein, "Sound Randomized Smoothing in Floating-Point Arithmetic", ICLR 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.reports import plots
from trustlab.reports.body import Body, Fragment, slug
from trustlab.reports.kinds import RecordKind, RecordSet, ReportContext, ReportPart
from trustlab.reports.metrics import EpsCurve

__all__ = ["KIND", "SmoothingView", "SMOOTHING_KEYS", "REPORT_RADII", "GUARANTEE", "FLOAT_CAVEAT",
           "certified_accuracy", "average_certified_radius", "smoothing_views"]

SMOOTHING_KEYS = ("idx", "y", "prediction", "correct")
REPORT_RADII = tuple(0.25 * i for i in range(9))  # 0, 0.25, ..., 2.0
LINF_EPS = (0.01, 0.02, 0.05, 0.1, 0.3)  # l_inf radii of the l_inf view (l_2 radius >= eps * sqrt(d))
GUARANTEE = ("Guarantee: for each example, with probability at least 1 - alpha over the noise, CERTIFY returns the "
             "smoothed classifier's class with a radius within which that class cannot change, or abstains. This "
             "holds for each example separately, not simultaneously over the dataset: about alpha times the "
             "number of examples may be wrong. Abstentions count as incorrect.")
FLOAT_CAVEAT = ("Floating-point caveat: the guarantee assumes exact arithmetic. Voracek and Hein (ICLR 2023) show "
                "that standard randomized smoothing is not sound in floating point (they construct certificates "
                "that an adversarial example at a smaller distance violates); radii here are computed as in Cohen "
                "et al. and inherit that limitation.")


def certified_accuracy(records: Sequence[dict[str, Any]], radius: float) -> float:
    """The fraction of examples with ``correct`` and ``radius >= radius`` (an abstention is never correct).

    Raises:
        ValueError: no records, or a row without ``correct`` or ``radius``.
    """
    if not records:
        raise ValueError("records is empty; can't compute certified accuracy")
    try:
        return sum(bool(r["correct"]) and r["radius"] is not None and r["radius"] >= radius
                   for r in records) / len(records)
    except KeyError as e:
        raise ValueError(f"smoothing records need 'correct' and 'radius', a row lacks {e}") from None


def average_certified_radius(records: Sequence[dict[str, Any]]) -> float:
    """Mean over examples of the radius of correct ones, 0 for the others (Zhai et al. 2020's ACR).

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("records is empty; can't compute the average certified radius")
    return sum(float(r["radius"]) for r in records if r["correct"] and r.get("radius") is not None) / len(records)


@dataclass(frozen=True)
class SmoothingView:
    """One smoothing evaluation ``RUN/smoothing/<id>/``: its ``id``, ``mode`` (certify or predict), ``noise``,
    ``sigma``, ``p`` (norm of the radius), ``alpha``, ``records``, ``summary``, ``config`` and ``path``."""

    id: str
    mode: str
    noise: str
    sigma: float
    p: float
    alpha: float
    records: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    config: dict[str, Any]
    path: Path

    @property
    def n(self) -> int:
        return len(self.records)


def smoothing_views(sets: tuple[RecordSet, ...]) -> tuple[SmoothingView, ...]:
    """The kind's loader: one view per evaluation, sorted by (mode, noise, sigma, id).

    Raises:
        ValueError: a ``config.json`` without mode, sigma or alpha (the message names the file).
    """
    views = []
    for s in sets:
        c = s.config
        if not all(k in c for k in ("mode", "sigma", "alpha")):
            raise ValueError(f"{s.path / 'config.json'} needs mode, sigma and alpha")
        views.append(SmoothingView(id=s.id, mode=str(c["mode"]), noise=str(c.get("noise", "gaussian")),
                                   sigma=float(c["sigma"]), p=float(c.get("p", 2.0)), alpha=float(c["alpha"]),
                                   records=s.records, summary=s.summary, config=c, path=s.path))
    return tuple(sorted(views, key=lambda v: (v.mode, v.noise, v.sigma, v.id)))


def _norm(p: float) -> str:
    return f"l{p:g}"


def _row(run: str, v: SmoothingView) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run, "id": v.id, "noise": v.noise, "sigma": v.sigma, "radius": _norm(v.p),
                           "n0": v.config.get("n0"), "N": v.config.get("n"), "alpha": v.alpha, "n": v.n,
                           "abstain": sum(bool(r.get("abstain")) for r in v.records) / v.n}
    row.update({f"r={r:g}": certified_accuracy(v.records, r) for r in REPORT_RADII})
    row["ACR"] = average_certified_radius(v.records)
    return row


_COLUMNS = ["noise", "sigma", "radius", "n0", "N", "alpha", "n", *(f"r={r:g}" for r in REPORT_RADII), "ACR",
            "abstain"]
_PERCENT = {f"r={r:g}" for r in REPORT_RADII} | {"abstain"}


def _curves(views: Sequence[SmoothingView], runs: Sequence[str] | None = None) -> dict[str, EpsCurve]:
    top = max([2.0] + [max((r.get("radius") or 0.0) for r in v.records) for v in views])
    grid = np.linspace(0.0, top, 81)
    curves = {}
    for k, v in enumerate(views):
        acc = np.array([certified_accuracy(v.records, r) for r in grid])
        label = (f"{runs[k]}: sigma={v.sigma:g}" if runs is not None
                 else f"{v.noise} sigma={v.sigma:g} ({v.id[-10:]})")
        curves[label] = EpsCurve(grid, acc, acc, v.n)
    return curves


def _input_dim(run) -> int | None:
    """``d``, the number of input coordinates, from the run's dataset shape (None when it is not recorded)."""
    shape = run.config.get("dataset", {}).get("shape")
    return int(np.prod(shape)) if shape else None


def _linf_view(body: Body, i: int, run, views: Sequence[SmoothingView]) -> list[dict[str, Any]]:
    """The l_inf view of the l_2 certificates: ``|delta|_inf <= eps`` implies ``|delta|_2 <= eps sqrt(d)``, so the
    certified accuracy at l_inf ``eps`` is the l_2 one at ``eps sqrt(d)``; and the figure of how that conversion
    shrinks with ``d`` (Yang et al. 2020, Sec. 5; Kumar et al. 2020)."""
    from trustlab.smoothing.linf import DIMENSIONS, linf_radius_from_l2, plot_linf_shrinkage

    d = _input_dim(run)
    if d is None:
        return []
    dims = sorted({*DIMENSIONS.values(), d})
    png = plot_linf_shrinkage(dims=dims)
    body.figure(png, f"smoothing-linf-{slug(i, run.name)}.png", alt=f"l_inf radius implied by l2 radius, {run.name}",
                caption=f"The l_inf radius an l2 certificate implies, R / sqrt(d), for this run's d = {d} and the "
                        "usual image sizes: the l2 certificate says little about l_inf as d grows.")
    rows = []
    for v in views:
        row: dict[str, Any] = {"run": run.name, "id": v.id, "sigma": v.sigma, "d": d}
        row.update({f"linf={e:g}": certified_accuracy(v.records, e * math.sqrt(d)) for e in LINF_EPS})
        radii = [r.get("radius") or 0.0 for r in v.records if r.get("correct")]
        row["max linf"] = float(linf_radius_from_l2(max(radii), d)) if radii else 0.0
        rows.append(row)
    body.text(f"l_inf view of the Gaussian (l2) certificates, d = {d}: certified accuracy at l_inf eps is the l2 "
              f"certified accuracy at eps * sqrt(d) = {math.sqrt(d):.1f} eps; 'max linf' is the largest l_inf "
              "radius any correct example gets.")
    body.table(rows, ["sigma", "d", *(f"linf={e:g}" for e in LINF_EPS), "max linf"],
               floatfmt={"sigma": "g", "max linf": ".4f"}, percent={f"linf={e:g}" for e in LINF_EPS})
    return rows


def _section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    body.text(GUARANTEE)
    body.text(FLOAT_CAVEAT)
    body.text("Certified accuracy at radius r: the fraction of test examples that CERTIFY classifies correctly with "
              "a radius of at least r (radii in the noise's norm, in pixel space); ACR: the average certified "
              "radius, 0 for incorrect or abstained examples.")
    rows, linf_rows, gaussian = [], [], []
    for i, run in enumerate(ctx.runs):
        views = [v for v in run.views(KIND_NAME) if v.mode == "certify"]
        if not views:
            continue
        body.heading(run.name)
        for p in sorted({v.p for v in views}):
            mine = [v for v in views if v.p == p]
            png = plots.plot_eps_curves(_curves(mine), xlabel=f"certified radius ({_norm(p)})",
                                        title=f"smoothed certified accuracy: {run.name}")
            body.figure(png, f"smoothing-{slug(i, run.name, _norm(p))}.png",
                        alt=f"certified accuracy vs radius of {run.name}",
                        caption="Certified accuracy of the smoothed classifier against the radius, one line per "
                                "noise level (each evaluation's own alpha and sample sizes are in the table).")
        mine_rows = [_row(run.name, v) for v in views]
        body.table(mine_rows, _COLUMNS, floatfmt={"sigma": "g", "alpha": "g", "ACR": ".3f"}, percent=_PERCENT)
        rows += mine_rows
        l2 = [v for v in views if v.p == 2.0]
        if l2:
            linf_rows += _linf_view(body, i, run, l2)
        gaussian += [(run.name, v) for v in l2]
    if len({name for name, _ in gaussian}) > 1:  # one model per sigma: the lecture's plot across runs
        body.heading("all runs (l2)")
        png = plots.plot_eps_curves(_curves([v for _, v in gaussian], [name for name, _ in gaussian]),
                                    xlabel="certified radius (l2)", title="smoothed certified accuracy, all runs")
        body.figure(png, "smoothing-all-l2.png", alt="certified accuracy vs l2 radius, all runs",
                    caption="Certified accuracy against the l2 radius for every run's Gaussian evaluations: larger "
                            "sigma certifies larger radii at lower accuracy.")
    return ReportPart(body.section("smoothing", "Randomized smoothing"),
                      {"smoothing": rows, "smoothing_linf": linf_rows, "smoothing_guarantee": GUARANTEE,
                       "smoothing_caveat": FLOAT_CAVEAT})


def _run_part(run, ctx: ReportContext) -> Fragment:
    """The run's smoothing evaluations, PREDICT ones included, with accuracy and abstention."""
    body = Body()
    rows = [{"id": v.id, "mode": v.mode, "noise": v.noise, "sigma": v.sigma, "alpha": v.alpha, "n": v.n,
             "accuracy": sum(bool(r["correct"]) for r in v.records) / v.n,
             "abstain": sum(bool(r.get("abstain")) for r in v.records) / v.n,
             "seconds": v.summary.get("seconds")} for v in run.views(KIND_NAME)]
    body.text("Randomized smoothing evaluations (abstentions count as incorrect):")
    body.table(rows, ["id", "mode", "noise", "sigma", "alpha", "n", "accuracy", "abstain", "seconds"],
               floatfmt={"sigma": "g", "alpha": "g", "seconds": ".1f"}, percent={"accuracy", "abstain"})
    return body.part({"smoothing_evaluations": rows})


KIND_NAME = "smoothing"
KIND = RecordKind(
    name=KIND_NAME,
    keys=SMOOTHING_KEYS,
    folder="smoothing",
    load=smoothing_views,
    sections=(("smoothing", _section),),
    run_part=_run_part,
    order=20,
)
