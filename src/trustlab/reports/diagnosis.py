"""Sanity flags over evaluation records: signs that an attack is weak or buggy, or a defense is masking gradients.

Every check reads per-example records only (no model is loaded), compares numbers measured on the same
examples, and tolerates one example of noise. A flag is a value written into the report, never an exception.

The checks compare single-step attacks (FGSM's role) with iterative ones (PGD's role). Which role an evaluation
plays is read from its recorded configuration by :func:`step_type` (its ``steps``), not from its name, so an
iterative attack added later (APGD, say) is checked like PGD.

Reference:
    Carlini et al. 2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705 (sanity checks);
    Kurakin et al. 2016, "Adversarial Machine Learning at Scale", arXiv:1611.01236 (label leaking);
    Wong et al. 2020, "Fast is better than free", arXiv:2001.03994 (catastrophic overfitting);
    Athalye, Carlini & Wagner 2018, arXiv:1802.00420 (a gradient-free attack beating gradient ones);
    reliability-tests.md EVAL-05, EVAL-06, EVAL-08, EVAL-09, AT-03.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trustlab.reports.kinds import record_kinds
from trustlab.reports.metrics import accuracy_vs_eps, attack_families, same_eps, worst_case
from trustlab.reports.runs import BPDA_SUFFIX, AttackView, RunView, norm_label

__all__ = ["Flag", "CHECKS", "SINGLE_STEP_DEFENSES", "SINGLE_STEP", "ITERATIVE", "GRADIENT_FREE", "diagnose",
           "diagnose_run", "step_type", "blackbox_beats_whitebox", "not_converged", "model_flags"]

LABEL_LEAKING = "label_leaking"
CATASTROPHIC_OVERFITTING = "catastrophic_overfitting"
ITERATIVE_WEAKER = "iterative_weaker_than_single_step"
NON_MONOTONE = "non_monotone_in_eps"
NOT_CONVERGED = "pgd_not_converged"
BLACKBOX_BEATS_WHITEBOX = "blackbox_beats_whitebox"

CHECKS: dict[str, str] = {
    LABEL_LEAKING: "FGSM accuracy above clean accuracy (the attack leaks the label)",
    CATASTROPHIC_OVERFITTING: "FGSM accuracy more than 30 pp above PGD accuracy on a single-step-trained model",
    ITERATIVE_WEAKER: "PGD accuracy above FGSM accuracy at the same eps (a bug, or gradient masking)",
    NON_MONOTONE: "raw robust accuracy rising with eps for one attack (a weak or buggy attack)",
    NOT_CONVERGED: "PGD success changing by more than 0.5 pp when the steps or the restarts are doubled",
    BLACKBOX_BEATS_WHITEBOX: "a gradient-free attack (Square) or an attack through BPDA breaking more than 1 "
                             "example that every attack on the model's own gradient at the same eps missed "
                             "(gradient masking)",
}
SINGLE_STEP_DEFENSES = ("fgsm", "fgsm-rs")
SINGLE_STEP = "single-step"
ITERATIVE = "iterative"
# the role of an attack whose config records no ``steps``; any other such attack is single-step
_ROLE_WITHOUT_STEPS: dict[str, str | None] = {
    "fgsm": SINGLE_STEP, "fgsm-rs": SINGLE_STEP,
    "pgd": ITERATIVE,  # PGD's default is 10 steps
    "linear": None,  # closed form: exact on the linear models it applies to, so not compared with a gradient step
    "square": None,  # gradient-free: compared with the white-box attacks by blackbox_beats_whitebox instead
    "ensemble": None,  # white-box and gradient-free members in sequence: its records say which member broke what
}
GRADIENT_FREE = ("square",)  # attacks that never use a gradient: a masked gradient does not stop them
_STEP_PARAMS = ("steps", "step_size")  # may differ between the two runs of the convergence check


@dataclass(frozen=True)
class Flag:
    """One raised sanity check.

    Args:
        code: the check's name, a key of :data:`CHECKS`.
        severity: ``"warning"`` (the numbers are suspect) or ``"error"`` (an attack is wrong or masked).
        run: the run's display name.
        message: one sentence with the numbers.
        evidence: the numbers behind it (eps, p, attack ids, accuracies, counts, n), JSON-ready.
    """

    code: str
    severity: str
    run: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def step_type(view: AttackView) -> str | None:
    """Whether an evaluation is :data:`SINGLE_STEP` or :data:`ITERATIVE`, from its recorded configuration.

    A recorded ``steps`` decides: 1 is single-step, more is iterative. Without one, ``fgsm`` and ``fgsm-rs``
    are single-step, ``pgd`` is iterative (its default is 10 steps), the closed-form ``linear`` attack and the
    gradient-free ``square`` are neither (None: these checks leave them out; :func:`blackbox_beats_whitebox`
    compares Square with the white-box attacks), and any other attack is single-step.

    Args:
        view: an evaluation; only ``name`` and ``params`` are read.

    Returns:
        :data:`SINGLE_STEP`, :data:`ITERATIVE` or None.
    """
    steps = view.params.get("steps")
    if isinstance(steps, (int, float)) and not isinstance(steps, bool) and steps >= 1:
        return ITERATIVE if steps > 1 else SINGLE_STEP
    return _ROLE_WITHOUT_STEPS.get(view.name, SINGLE_STEP)


def diagnose(
    runs: Sequence[RunView],
    *,
    tolerance: int = 1,
    overfit_gap: float = 0.30,
    convergence_gap: float = 0.005,
    single_step_defenses: Sequence[str] | None = SINGLE_STEP_DEFENSES,
) -> list[Flag]:
    """Run every check of :data:`CHECKS` on every run; see :func:`diagnose_run`."""
    flags: list[Flag] = []
    for run in runs:
        flags += diagnose_run(run, tolerance=tolerance, overfit_gap=overfit_gap, convergence_gap=convergence_gap,
                              single_step_defenses=single_step_defenses)
    return flags


def diagnose_run(
    run: RunView,
    *,
    tolerance: int = 1,
    overfit_gap: float = 0.30,
    convergence_gap: float = 0.005,
    single_step_defenses: Sequence[str] | None = SINGLE_STEP_DEFENSES,
) -> list[Flag]:
    """The sanity flags of one run, from its attack records, then the model-level flags its evaluations recorded
    (:func:`model_flags`), then the flags of every registered record kind's own checks (``RecordKind.flags``).

    Args:
        run: the run and its evaluations.
        tolerance: examples of slack for the count comparisons (label leaking, PGD vs FGSM, monotonicity).
        overfit_gap: FGSM minus PGD robust accuracy above which catastrophic overfitting is flagged (AT-03).
        convergence_gap: change in PGD success rate, when the steps are at least doubled, above which the
            attack is flagged as not converged (EVAL-06).
        single_step_defenses: the training defenses that catastrophic overfitting is checked for (an
            undefended model often has a large FGSM-PGD gap); None checks every run.

    Returns:
        The flags, in check order.

    Raises:
        ValueError: ``tolerance < 0`` or a gap outside ``[0, 1]``.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    for name, gap in (("overfit_gap", overfit_gap), ("convergence_gap", convergence_gap)):
        if not 0 <= gap <= 1:
            raise ValueError(f"{name} must lie in [0, 1], got {gap}")
    flags: list[Flag] = []
    for views in _by_threat(run.attacks):
        fgsm = [v for v in views if step_type(v) == SINGLE_STEP]  # FGSM's role
        pgd = [v for v in views if step_type(v) == ITERATIVE]  # PGD's role
        flags += [_label_leaking(run, v, tolerance) for v in fgsm]
        if single_step_defenses is None or run.defense in single_step_defenses:
            flags.append(_catastrophic(run, fgsm, pgd, overfit_gap))
        flags.append(_iterative_weaker(run, fgsm, pgd, tolerance))
        flags += not_converged(pgd, run=run.name, gap=convergence_gap)
        flags.append(_blackbox(run, views, tolerance))
    for views in attack_families(run.attacks).values():
        flags.append(_non_monotone(run, views, tolerance))
    flags += model_flags(run)
    for kind in record_kinds():  # checks across kinds, such as EVAL-14 (certified but broken)
        if kind.flags is not None:
            flags += kind.flags(run)
    return [f for f in flags if f is not None]


def model_flags(run: RunView) -> list[Flag]:
    """The model-level flags its attack evaluations recorded in ``checks.json`` (computed at attack time on the
    model, :mod:`trustlab.evaluation.checks`; read here without one), one per code: evaluations of one checkpoint
    raise the same flags, so the first message is kept and every evaluation that raised it is named."""
    found: dict[str, Flag] = {}
    for a in run.attacks:
        for f in a.checks.get("flags", []):
            code = str(f.get("code"))
            if code in found:
                found[code].evidence["attacks"].append(a.id)
                continue
            evidence = {**f.get("evidence", {}), "n_checked": a.checks.get("n"), "attacks": [a.id]}
            found[code] = Flag(code, str(f.get("severity", "warning")), run.name, str(f.get("message", "")), evidence)
    return list(found.values())


def _by_threat(attacks: Sequence[AttackView]) -> list[list[AttackView]]:
    groups: list[list[AttackView]] = []
    for a in attacks:
        group = next((g for g in groups if same_eps(g[0].eps, a.eps) and g[0].p == a.p), None)
        if group is None:
            groups.append([a])
        else:
            group.append(a)
    return groups


def _counts(groups: dict[str, Sequence[AttackView]]) -> tuple[dict[str, int], int]:
    """Robust counts of each group (per-example worst case within it) on the examples all groups share."""
    cases = {k: {r["idx"]: r["robust"] for r in worst_case({v.id: v.records for v in views})}
             for k, views in groups.items()}
    shared = set.intersection(*(set(c) for c in cases.values()))
    return {k: sum(bool(c[i]) for i in shared) for k, c in cases.items()}, len(shared)


def _where(views: Sequence[AttackView]) -> dict[str, Any]:
    return {"eps": views[0].eps, "p": norm_label(views[0].p)}


def _names(views: Sequence[AttackView]) -> str:
    """How messages name the attacks of a group: ``FGSM``, ``PGD``, ``APGD/PGD``."""
    return "/".join(sorted({v.name.upper() for v in views}))


def _label_leaking(run: RunView, view: AttackView, tolerance: int) -> Flag | None:
    n = len(view.records)
    clean = sum(bool(r["correct"]) for r in view.records)
    adv = sum(bool(r["adv_correct"]) for r in view.records)
    if n == 0 or adv - clean <= tolerance:
        return None
    return Flag(LABEL_LEAKING, "warning", run.name,
                f"{_names([view])} accuracy {adv / n:.1%} is above clean accuracy {clean / n:.1%} at "
                f"eps={view.eps:g}: the attack's use of the true label leaks it (Kurakin et al. 2016); evaluate "
                "with predicted labels or an iterative attack",
                {**_where([view]), "attack": view.id, "n": n, "clean_acc": clean / n, "fgsm_acc": adv / n})


def _catastrophic(run: RunView, fgsm: list[AttackView], pgd: list[AttackView], gap: float) -> Flag | None:
    if not pgd:
        return None
    if fgsm:
        counts, n = _counts({"fgsm": fgsm, "pgd": pgd})
        if n == 0:
            return None
        fgsm_acc, source = counts["fgsm"] / n, f"{_names(fgsm)} evaluation"
    else:  # AT-03 as written: the FGSM accuracy the training loop saw, against PGD at the training budget
        trained, history = run.train_threat, run.summary.get("history") or []
        if not history or trained is None or not same_eps(trained[0], pgd[0].eps):
            return None
        if trained[1] != pgd[0].p or history[-1].get("train_acc") is None:
            return None
        counts, n = _counts({"pgd": pgd})
        fgsm_acc, source = float(history[-1]["train_acc"]), "FGSM training accuracy (last epoch)"
    pgd_acc = counts["pgd"] / n
    if fgsm_acc - pgd_acc <= gap:
        return None
    return Flag(CATASTROPHIC_OVERFITTING, "warning", run.name,
                f"{_names(fgsm) if fgsm else 'FGSM'} accuracy {fgsm_acc:.1%} ({source}) is "
                f"{100 * (fgsm_acc - pgd_acc):.1f} pp above {_names(pgd)} accuracy {pgd_acc:.1%} "
                f"at eps={pgd[0].eps:g}: catastrophic overfitting (Wong et al. 2020); the model resists only "
                "single-step attacks",
                {**_where(pgd), "source": source, "fgsm_acc": fgsm_acc, "pgd_acc": pgd_acc, "n": n,
                 "attacks": [v.id for v in fgsm + pgd]})


def _iterative_weaker(run: RunView, fgsm: list[AttackView], pgd: list[AttackView], tolerance: int) -> Flag | None:
    if not fgsm or not pgd:
        return None
    counts, n = _counts({"fgsm": fgsm, "pgd": pgd})
    if n == 0 or counts["pgd"] - counts["fgsm"] <= tolerance:
        return None
    return Flag(ITERATIVE_WEAKER, "error", run.name,
                f"{_names(pgd)} accuracy {counts['pgd'] / n:.1%} is above {_names(fgsm)} accuracy "
                f"{counts['fgsm'] / n:.1%} at "
                f"eps={pgd[0].eps:g}: an iterative attack should never be weaker; suspect a bug in the attack "
                "or gradient masking",
                {**_where(pgd), "n": n, "fgsm_acc": counts["fgsm"] / n, "pgd_acc": counts["pgd"] / n,
                 "fgsm_robust": counts["fgsm"], "pgd_robust": counts["pgd"], "attacks": [v.id for v in fgsm + pgd]})


def _longer(a: AttackView, views: Sequence[AttackView], key: str) -> AttackView | None:
    """The evaluation of ``a``'s attack with the most ``key`` (steps or restarts), at least twice ``a``'s, and
    every other setting equal (a step size may differ with the steps)."""
    free = _STEP_PARAMS if key == "steps" else ("restarts",)
    value = a.params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return None
    rest = {k: v for k, v in a.params.items() if k not in free}
    longer = [b for b in views if b.name == a.name and isinstance(b.params.get(key), int)
              and b.params[key] >= 2 * value and {k: v for k, v in b.params.items() if k not in free} == rest]
    return max(longer, key=lambda v: v.params[key]) if longer else None


def not_converged(views: Sequence[AttackView], *, run: str = "", gap: float = 0.005) -> list[Flag]:
    """Flag each iterative evaluation whose success rate changes by more than ``gap`` when its steps, or its
    restarts, are at least doubled with every other setting equal (EVAL-06), on the examples both evaluated.

    Args:
        views: evaluations at one threat model (those of another attack name are never paired).
        run: the run's name, written into each flag.
        gap: the largest change in success rate (a fraction) taken as converged.

    Returns:
        One flag per evaluation and doubled setting that changed the result.
    """
    flags = []
    for a in views:
        for key in ("steps", "restarts"):
            b = _longer(a, views, key)
            if b is None:
                continue
            counts, n = _counts({"k": [a], "more": [b]})
            if n == 0:
                continue
            change = (counts["k"] - counts["more"]) / n  # rise in success rate = drop in robust accuracy
            if abs(change) <= gap:
                continue
            why = (f"{_names([a])} has not converged, so robust accuracy is overestimated: increase the {key}"
                   if change > 0 else
                   f"more {key} helped the defender: the attack does not keep its best iterate (EVAL-06)")
            flags.append(Flag(NOT_CONVERGED, "warning", run,
                              f"going from {a.params[key]} to {b.params[key]} {_names([a])} {key} at eps={a.eps:g} "
                              f"changed the success rate by {100 * change:+.1f} pp: {why}",
                              {**_where([a]), "n": n, key: [a.params[key], b.params[key]], "attacks": [a.id, b.id],
                               "robust_acc": [counts["k"] / n, counts["more"] / n], "success_change": change}))
    return flags


def blackbox_beats_whitebox(
    records_by_attack: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    run: str = "",
    tolerance: int = 1,
    gradient_free: Sequence[str] = GRADIENT_FREE,
    evidence: Mapping[str, Any] | None = None,
) -> Flag | None:
    """Flag examples that a gradient-free attack, or an attack through BPDA, broke but every attack on the
    model's own gradient missed (EVAL-09).

    A gradient attack with the same budget should find at least what random search finds, and at least what it
    finds through a straight-through approximation of the model; when it does not, the gradient is masked or
    obfuscated (Athalye et al. 2018; Carlini et al. 2019, Sec. 5). Examples are matched by ``idx``; only those
    every evaluation holds count. The message gives the robust accuracy of the white-box attacks and the
    per-example worst case over all of them.

    Args:
        records_by_attack: per-example records of evaluations at one threat model, keyed by attack name or id
            (``square`` or ``square-linf-...`` is gradient-free; a key containing ``+bpda`` is an attack through
            BPDA).
        run: the run's name, written into the flag.
        tolerance: examples of slack: the flag needs more than this many.
        gradient_free: the attack names that use no gradient.
        evidence: more evidence (eps, p) to write into the flag.

    Returns:
        The flag, or None (also when there is no gradient-free or no white-box evaluation).
    """
    black = [k for k in records_by_attack
             if BPDA_SUFFIX in k or any(k == g or k.startswith(f"{g}-") for g in gradient_free)]
    white = [k for k in records_by_attack if k not in black]
    if not black or not white or any(len(records_by_attack[k]) == 0 for k in records_by_attack):
        return None
    rows = worst_case(records_by_attack)
    beaten = [r["idx"] for r in rows if r["correct"] and r["broken_by"] and set(r["broken_by"]) <= set(black)]
    if len(beaten) <= tolerance:
        return None
    white_robust = sum(bool(r["correct"]) and not set(r["broken_by"]) - set(black) for r in rows)
    worst = sum(bool(r["robust"]) for r in rows)
    return Flag(BLACKBOX_BEATS_WHITEBOX, "error", run,
                f"{', '.join(sorted(black))} broke {len(beaten)} of {len(rows)} examples that every attack on the "
                f"model's own gradient ({', '.join(sorted(white))}) missed: the gradients are masked, so the "
                f"white-box robust accuracy {white_robust / len(rows):.1%} is too high and the per-example worst "
                f"case {worst / len(rows):.1%} is the number to report; attack the defense through BPDA (--bpda) "
                "or with a gradient-free attack (--attack square)",
                {**(evidence or {}), "n": len(rows), "beaten": len(beaten), "idx": beaten[:20],
                 "white_acc": white_robust / len(rows), "worst_acc": worst / len(rows), "gradient_free": sorted(black),
                 "white_box": sorted(white)})


def _blackbox(run: RunView, views: list[AttackView], tolerance: int) -> Flag | None:
    records: dict[str, Sequence[dict[str, Any]]] = {}
    for v in views:
        if v.name == "ensemble" and any("broken_by" in r for r in v.records):
            records.update(_ensemble_split(v))
        else:
            records[_record_key(v)] = v.records
    return blackbox_beats_whitebox(records, run=run.name, tolerance=tolerance, evidence=_where(views))


def _record_key(view: AttackView) -> str:
    """The key of an evaluation's records in :func:`blackbox_beats_whitebox`: its id, starting with its name
    (``pgd+bpda-linf-...`` for the folder ``pgd-bpda-linf-...``)."""
    if view.id.startswith(view.name):
        return view.id
    dashed = view.name.replace(BPDA_SUFFIX, "-bpda")
    if view.name.endswith(BPDA_SUFFIX) and view.id.startswith(dashed):
        return view.name + view.id[len(dashed):]
    return f"{view.name}-{view.id}"


def _ensemble_split(view: AttackView) -> dict[str, list[dict[str, Any]]]:
    """An ensemble's records as two record sets, by the member that broke each example (``broken_by``): what its
    gradient-free members broke, and what its white-box members broke. The ensemble runs a member only on the
    examples the earlier ones missed, so an example Square broke is one every white-box member missed."""
    def free(member: Any) -> bool:
        return isinstance(member, str) and any(member == g or member.startswith((f"{g}-", f"{g}#"))
                                               for g in GRADIENT_FREE)

    def part(keep) -> list[dict[str, Any]]:
        rows = []
        for r in view.records:
            broken = bool(r["correct"]) and r.get("broken_by") is not None and keep(r["broken_by"])
            rows.append({"idx": r["idx"], "y": r["y"], "correct": r["correct"],
                         "robust": bool(r["correct"]) and not broken})
        return rows

    return {f"{GRADIENT_FREE[0]}-in-{view.id}": part(free), f"white-box-members-of-{view.id}": part(lambda m: not free(m))}


def _non_monotone(run: RunView, views: list[AttackView], tolerance: int) -> Flag | None:
    curve = accuracy_vs_eps(views, include_clean=False)
    if len(curve.eps) < 2:
        return None
    counts = [round(a * curve.n) for a in curve.raw]
    rises = [(float(curve.eps[j]), float(curve.eps[j + 1]), curve.raw[j], curve.raw[j + 1])
             for j in range(len(counts) - 1) if counts[j + 1] - counts[j] > tolerance]
    if not rises:
        return None
    e0, e1, a0, a1 = rises[0]
    return Flag(NON_MONOTONE, "error", run.name,
                f"{views[0].name} ({norm_label(views[0].p)}) accuracy rises from {a0:.1%} at eps={e0:g} to "
                f"{a1:.1%} at eps={e1:g}: a larger budget can only help the attacker, so the attack is failing "
                "(the reported curve carries successes over and stays monotone)",
                {"attack": views[0].name, "p": norm_label(views[0].p), "n": curve.n,
                 "eps": [float(e) for e in curve.eps], "raw_acc": [float(a) for a in curve.raw],
                 "rises": [{"from_eps": r[0], "to_eps": r[1], "from_acc": float(r[2]), "to_acc": float(r[3])}
                           for r in rises]})
