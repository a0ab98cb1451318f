"""The ``certificate`` kind: one record set per certification ``RUN/certificates/<id>/`` (``trustlab verify``).

A row holds ``idx, y, verdict, certified`` (and ``pred, correct, min_margin_lower, margin_lower, seconds``); the
set's ``config.json`` names the bound method, its settings and the threat. The kind adds:

- a matrix column ``certified-<method>`` per bound method at the matrix's threat. Certified accuracy is a lower
  bound of robust accuracy, so it stays out of the row's ``worst`` (the per-example worst case over attacks, an
  upper bound);
- the section "Certified accuracy": per run and norm, certified accuracy against eps for each method next to the
  worst case over the run's attacks on the same examples (the empirical upper bound), and the table behind it;
- the EVAL-14 cross-check ``certified_but_broken``: an example that a method certifies at eps and that an attack
  breaks at the same norm, a budget ``<= eps`` and a box inside the certificate's is a soundness bug (the
  certificate is unsound, or the attack left the threat set), flagged with severity ``error`` in the diagnosis and
  at the top of the section.

Reference:
    reliability-tests.md EVAL-14 (``certified => clean-correct and not broken``), CERT-05.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.reports import plots
from trustlab.reports.body import Body, Fragment, slug
from trustlab.reports.diagnosis import Flag
from trustlab.reports.kinds import Cell, RecordKind, RecordSet, ReportContext, ReportPart
from trustlab.reports.metrics import EpsCurve, accuracy, accuracy_vs_eps, same_eps, worst_case
from trustlab.reports.runs import RunView, norm_label
from trustlab.threat import parse_p

__all__ = ["KIND", "CertificateView", "CERTIFICATE_KEYS", "CERTIFIED_BUT_BROKEN", "certificate_views",
           "certified_but_broken", "column_name"]

CERTIFICATE_KEYS = ("idx", "y", "verdict", "certified")
CERTIFIED_BUT_BROKEN = "certified_but_broken"
METHOD_ORDER = ("ibp", "crown-ibp", "crown", "alpha-crown", "lp", "sdp", "milp")  # loosest to tightest, roughly
_SHOWN = 10  # example idx named in a flag's message


@dataclass(frozen=True)
class CertificateView:
    """One certification ``RUN/certificates/<id>/``.

    Args:
        id: the folder name, e.g. ``crown-linf-eps0.1-n1000-1f2e3d4c5b``.
        method: the bound method's registry name.
        eps: the threat's budget.
        p: the norm, ``math.inf`` or ``2.0``.
        threat: the threat as written (``eps, p, lower, upper``).
        records: one row per example.
        summary: ``summary.json`` (empty if not written).
        config: the whole ``config.json``.
        path: the folder.
    """

    id: str
    method: str
    eps: float
    p: float
    threat: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    config: dict[str, Any]
    path: Path

    @property
    def n(self) -> int:
        """Number of certified-or-not examples."""
        return len(self.records)

    @property
    def certified(self) -> set[int]:
        """The ``idx`` of the examples the method certified."""
        return {int(r["idx"]) for r in self.records if r["certified"]}


def column_name(method: str) -> str:
    """The matrix column of a method: ``certified-crown``."""
    return f"certified-{method}"


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def certificate_views(sets: tuple[RecordSet, ...]) -> tuple[CertificateView, ...]:
    """The kind's loader: one :class:`CertificateView` per certification, sorted by (method, p, eps, id).

    Raises:
        ValueError: a ``config.json`` records no ``threat.eps`` or no method name (the message names it).
    """
    views = []
    for s in sets:
        threat = dict(s.config.get("threat", {}))
        method = s.config.get("name", dict(s.config.get("method", {})).get("method"))
        if "eps" not in threat or not isinstance(method, str):
            raise ValueError(f"{s.path / 'config.json'} needs threat.eps and the method's name")
        views.append(CertificateView(id=s.id, method=method, eps=float(threat["eps"]),
                                     p=parse_p(threat.get("p", "inf")), threat=threat, records=s.records,
                                     summary=s.summary, config=s.config, path=s.path))
    return tuple(sorted(views, key=lambda v: (_method_key(v.method), v.p, v.eps, v.id)))


def _views(run: RunView) -> tuple[CertificateView, ...]:
    return run.views(KIND_NAME)


def _columns(runs: Sequence[RunView]) -> tuple[str, ...]:
    methods = {v.method for run in runs for v in _views(run)}
    return tuple(column_name(m) for m in sorted(methods, key=_method_key))


def _at(run: RunView, eps: float, p: float | None) -> list[CertificateView]:
    return [v for v in _views(run) if same_eps(v.eps, eps) and (p is None or v.p == p)]


def _metrics(run: RunView, eps: float | None, p: float | None) -> dict[str, Cell]:
    """Certified accuracy per method at (eps, p), from its certification on the most examples. No cases: a
    certificate is not an attack, and the matrix's worst case stays over attacks."""
    if eps is None:
        return {}
    cells = {}
    for method in dict.fromkeys(v.method for v in _at(run, eps, p)):
        views = [v for v in _at(run, eps, p) if v.method == method]
        best = max(views, key=lambda v: (v.n, v.id))
        notes = (f"{column_name(method)}: {best.id} on {best.n} examples, of {len(views)} certifications",) \
            if len(views) > 1 else ()
        cells[column_name(method)] = Cell(accuracy(best.records, "certified"), notes=notes)
    return cells


def _inside(attack: Mapping[str, Any], cert: Mapping[str, Any]) -> bool:
    """The attack's box lies inside the certificate's (a missing limit is unbounded)."""
    def limit(threat: Mapping[str, Any], key: str, default: float) -> float:
        v = threat.get(key, 0.0 if key == "lower" else 1.0)
        return default if v is None else float(v)

    return (limit(attack, "lower", -math.inf) >= limit(cert, "lower", -math.inf)
            and limit(attack, "upper", math.inf) <= limit(cert, "upper", math.inf))


def certified_but_broken(run: RunView) -> list[Flag]:
    """EVAL-14 across kinds: the examples a certification certifies that an attack breaks inside its threat set.

    An attack at the same norm, a budget ``<= eps`` and a box inside the certificate's searches a subset of the
    certified set, so breaking a certified example (a record with ``robust`` false: misclassified clean or
    adversarially) contradicts the certificate. One ``error`` flag per certification with any such example.

    Returns:
        The flags, in certification order; none when every certified example survives every such attack.
    """
    flags = []
    for cert in _views(run):
        certified = cert.certified
        if not certified:
            continue
        hits: dict[str, list[int]] = {}
        for a in run.attacks:
            if a.p != cert.p or not (a.eps <= cert.eps or same_eps(a.eps, cert.eps)) or not _inside(a.threat, cert.threat):
                continue
            broken = sorted(int(r["idx"]) for r in a.records if not r["robust"] and int(r["idx"]) in certified)
            if broken:
                hits[a.id] = broken
        if hits:
            idx = sorted({i for found in hits.values() for i in found})
            message = (f"SOUNDNESS BUG (EVAL-14): {len(idx)} example(s) certified by {cert.method} at "
                       f"{norm_label(cert.p)} eps={cert.eps:g} ({cert.id}) are broken by {', '.join(hits)} inside "
                       f"that threat set: the certificate is unsound or the attack left the threat model "
                       f"(idx {idx[:_SHOWN]}{' ...' if len(idx) > _SHOWN else ''})")
            flags.append(Flag(CERTIFIED_BUT_BROKEN, "error", run.name, message,
                              {"certificate": cert.id, "method": cert.method, "eps": cert.eps,
                               "p": norm_label(cert.p), "attacks": hits, "n_certified": len(certified)}))
    return flags


def _attack_on(run: RunView, cert: CertificateView) -> tuple[float | None, int]:
    """Worst-case accuracy over the run's attacks at the certificate's threat, on its examples, and their number."""
    views = [a for a in run.attacks if same_eps(a.eps, cert.eps) and a.p == cert.p]
    if not views:
        return None, 0
    idx = {int(r["idx"]) for r in cert.records}
    cases = [r for r in worst_case({a.id: a.records for a in views}) if r["idx"] in idx]
    return (accuracy(cases, "robust"), len(cases)) if cases else (None, 0)


def _row(run: RunView, cert: CertificateView) -> dict[str, Any]:
    attack, n_attack = _attack_on(run, cert)
    certified = accuracy(cert.records, "certified")
    seconds = cert.summary.get("seconds_per_example")
    return {"run": run.name, "id": cert.id, "method": cert.method, "p": norm_label(cert.p), "eps": cert.eps,
            "n": cert.n, "clean": accuracy(cert.records, "correct") if "correct" in cert.records[0] else None,
            "certified": certified, "attack": attack, "n_attack": n_attack,
            "gap": None if attack is None else attack - certified,
            "margin": cert.summary.get("mean_min_margin_lower"),
            "unknown": sum(r["verdict"] == "unknown" for r in cert.records),
            "ms_per_example": None if seconds is None else 1000 * float(seconds),
            "ms_median": _ms(cert.summary.get("seconds_median")), "ms_max": _ms(cert.summary.get("seconds_max"))}


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else 1000 * float(seconds)


_TABLE = ["method", "p", "eps", "n", "clean", "certified", "attack", "n_attack", "gap", "margin", "unknown",
          "ms_per_example", "ms_median", "ms_max"]
_FMT = {"eps": "g", "margin": ".3f", "ms_per_example": ".2f", "ms_median": ".2f", "ms_max": ".2f"}
_PERCENT = {"clean", "certified", "attack", "gap"}


def _curves(run: RunView, p: float) -> dict[str, EpsCurve]:
    """Certified accuracy vs eps per method (eps 0: clean accuracy of the same examples), and the attacks' worst
    case on the examples the certificates cover."""
    curves: dict[str, EpsCurve] = {}
    views = [v for v in _views(run) if v.p == p]
    for method in dict.fromkeys(v.method for v in views):
        mine = sorted((v for v in views if v.method == method), key=lambda v: v.eps)
        eps = [0.0] + [v.eps for v in mine]
        first = mine[0].records
        acc = [accuracy(first, "correct") if "correct" in first[0] else math.nan]
        acc += [accuracy(v.records, "certified") for v in mine]
        values = np.asarray(acc, dtype=float)
        curves[f"{method} (certified)"] = EpsCurve(np.asarray(eps, dtype=float), values, values, min(v.n for v in mine))
    attacks = [a for a in run.attacks if a.p == p]
    if attacks:
        idx = {int(r["idx"]) for v in views for r in v.records}
        try:
            curves["attacks (worst case)"] = accuracy_vs_eps(attacks, any_attack=True, only=idx)
        except ValueError:  # the attacks saw none of the certified examples
            pass
    return curves


def _section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    flags = [f for run in ctx.runs for f in certified_but_broken(run)]
    if flags:
        body.text(f"{len(flags)} SOUNDNESS ERROR(S) (EVAL-14): examples certified by a bound method are broken by "
                  "an attack inside the certified threat set. No certified number below can be trusted until "
                  "this is explained.", css_class="flag-error")
        body.bullets([f.message for f in flags])
    body.text("Certified accuracy (a lower bound of robust accuracy: every certified example is provably robust) "
              "next to the per-example worst case over the run's attacks on the same examples (an upper bound). "
              "The true robust accuracy lies between them; gap = attack - certified.")
    rows = []
    for i, run in enumerate(ctx.runs):
        if not _views(run):
            continue
        body.heading(run.name)
        for p in sorted({v.p for v in _views(run)}):
            curves = _curves(run, p)
            png = plots.plot_eps_curves(curves, xlabel=f"eps ({norm_label(p)})",
                                        title=f"certified vs attacked accuracy: {run.name} ({norm_label(p)})")
            body.figure(png, f"certified-{slug(i, run.name, norm_label(p))}.png",
                        alt=f"certified accuracy vs eps of {run.name}",
                        caption="Each method's certified accuracy against eps (eps=0: clean accuracy of the same "
                                "examples), and the worst case over every attack at each eps on the examples the "
                                "certificates cover (carried: an example broken at eps stays broken at larger "
                                "eps). A certified curve above the attack curve is a soundness bug.")
        mine = [_row(run, v) for v in _views(run)]
        body.table(mine, _TABLE, floatfmt=_FMT, percent=_PERCENT)
        rows += mine
        for v in _views(run):
            _counterexamples(body, run, v, i, ctx.max_examples)
    return ReportPart(body.section("certified", "Certified accuracy"),
                      {"certificates": rows, "certificate_flags": [asdict(f) for f in flags]})


def _counterexamples(body: Body, run: RunView, view: CertificateView, i: int, limit: int) -> None:
    """The points a method proved non-robust (a solver's counterexamples, not the clean misclassifications), as
    clean / difference / counterexample rows, from the set's ``counterexamples.safetensors``."""
    path = view.path / "counterexamples.safetensors"
    proven = {int(r["idx"]): r for r in view.records if r["verdict"] == "falsified" and r.get("correct")}
    if not proven or not path.exists():
        return
    from safetensors.numpy import load_file

    grid = load_file(path)
    take = [j for j, idx in enumerate(grid["idx"].tolist()) if int(idx) in proven][:limit]
    if not take:
        return
    lower, upper = float(view.threat.get("lower", 0.0)), float(view.threat.get("upper", 1.0))
    x, cx = grid["clean"][take], grid["counterexample"][take]
    if x.ndim == 2:  # flat inputs cannot be drawn as images
        return
    titles = [(f"idx {int(grid['idx'][j])}: y={proven[int(grid['idx'][j])]['y']}", "counterexample") for j in take]
    png = plots.plot_examples(x, cx, titles, lower=lower, upper=upper,
                              title=f"{run.name}: {view.method} counterexamples at eps={view.eps:g}")
    body.figure(png, f"counterexamples-{slug(i, run.name, view.id)}.png",
                alt=f"{view.method} counterexamples of {run.name}",
                caption=f"Examples {view.method} proved not robust at {norm_label(view.p)} eps={view.eps:g}: the "
                        "clean image, the difference (amplified), and a point of the threat set that the plain "
                        "model misclassifies (re-checked in float32).")


def _run_part(run: RunView, ctx: ReportContext) -> Fragment:
    """The run's certifications with their method settings and the checkpoint they certified."""
    body = Body()
    views = _views(run)
    rows = [{"id": v.id, "method": v.method, "settings": dict(v.config.get("method", {})), "p": norm_label(v.p),
             "eps": v.eps, "n": v.n, "certified": accuracy(v.records, "certified"),
             "seconds": v.summary.get("seconds")} for v in views]
    body.text("Certifications (bound method and settings as recorded in each config.json):")
    body.table(rows, ["id", "method", "settings", "p", "eps", "n", "certified", "seconds"],
               floatfmt={"eps": "g", "seconds": ".1f"}, percent={"certified"})
    return body.part({"certifications": rows})


KIND_NAME = "certificate"
KIND = RecordKind(
    name=KIND_NAME,
    keys=CERTIFICATE_KEYS,
    folder="certificates",
    load=certificate_views,
    columns=_columns,
    metrics=_metrics,
    sections=(("certified", _section),),
    run_part=_run_part,
    checks={CERTIFIED_BUT_BROKEN: "an example certified by a bound method and broken by an attack at the same "
                                  "norm and a budget no larger (EVAL-14: a soundness bug, severity error)"},
    flags=certified_but_broken,
    order=15,
)
