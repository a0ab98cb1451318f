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
    reliability-tests.md EVAL-05, EVAL-06, EVAL-08, AT-03.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trustlab.reports.metrics import accuracy_vs_eps, attack_families, same_eps, worst_case
from trustlab.reports.runs import AttackView, RunView, norm_label

__all__ = ["Flag", "CHECKS", "SINGLE_STEP_DEFENSES", "SINGLE_STEP", "ITERATIVE", "diagnose", "diagnose_run",
           "step_type"]

LABEL_LEAKING = "label_leaking"
CATASTROPHIC_OVERFITTING = "catastrophic_overfitting"
ITERATIVE_WEAKER = "iterative_weaker_than_single_step"
NON_MONOTONE = "non_monotone_in_eps"
NOT_CONVERGED = "pgd_not_converged"

CHECKS: dict[str, str] = {
    LABEL_LEAKING: "FGSM accuracy above clean accuracy (the attack leaks the label)",
    CATASTROPHIC_OVERFITTING: "FGSM accuracy more than 30 pp above PGD accuracy on a single-step-trained model",
    ITERATIVE_WEAKER: "PGD accuracy above FGSM accuracy at the same eps (a bug, or gradient masking)",
    NON_MONOTONE: "raw robust accuracy rising with eps for one attack (a weak or buggy attack)",
    NOT_CONVERGED: "PGD success changing by more than 0.5 pp when the steps are doubled",
}
SINGLE_STEP_DEFENSES = ("fgsm", "fgsm-rs")
SINGLE_STEP = "single-step"
ITERATIVE = "iterative"
# the role of an attack whose config records no ``steps``; any other such attack is single-step
_ROLE_WITHOUT_STEPS: dict[str, str | None] = {
    "fgsm": SINGLE_STEP, "fgsm-rs": SINGLE_STEP,
    "pgd": ITERATIVE,  # PGD's default is 10 steps
    "linear": None,  # closed form: exact on the linear models it applies to, so not compared with a gradient step
}
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
    are single-step, ``pgd`` is iterative (its default is 10 steps), the closed-form ``linear`` attack is
    neither (None: the checks leave it out), and any other attack is single-step.

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
    """The sanity flags of one run, from its attack records.

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
        flags += _not_converged(run, pgd, convergence_gap)
    for views in attack_families(run.attacks).values():
        flags.append(_non_monotone(run, views, tolerance))
    return [f for f in flags if f is not None]


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


def _not_converged(run: RunView, pgd: list[AttackView], gap: float) -> list[Flag]:
    flags = []
    for a in pgd:
        steps = a.params.get("steps")
        if not isinstance(steps, int) or steps < 1:
            continue
        rest = {k: v for k, v in a.params.items() if k not in _STEP_PARAMS}
        longer = [b for b in pgd if b.name == a.name and isinstance(b.params.get("steps"), int)
                  and b.params["steps"] >= 2 * steps
                  and {k: v for k, v in b.params.items() if k not in _STEP_PARAMS} == rest]
        if not longer:
            continue
        b = max(longer, key=lambda v: v.params["steps"])
        counts, n = _counts({"k": [a], "more": [b]})
        if n == 0:
            continue
        change = (counts["k"] - counts["more"]) / n  # rise in success rate = drop in robust accuracy
        if abs(change) <= gap:
            continue
        why = (f"{_names([a])} has not converged; robust accuracy is overestimated" if change > 0 else
               "more steps helped the defender: the attack does not keep its best iterate (EVAL-06)")
        flags.append(Flag(NOT_CONVERGED, "warning", run.name,
                          f"going from {steps} to {b.params['steps']} {_names([a])} steps at eps={a.eps:g} changed the "
                          f"success rate by {100 * change:+.1f} pp: {why}",
                          {**_where([a]), "n": n, "steps": [steps, b.params["steps"]], "attacks": [a.id, b.id],
                           "robust_acc": [counts["k"] / n, counts["more"] / n], "success_change": change}))
    return flags


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
