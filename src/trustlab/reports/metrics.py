"""One small pure function per metric, over per-example records; tables and plots both call these.

Aggregation is per example first (Carlini et al. 2019, "mean of the minimum, not minimum of the means"): an
example counts as robust only if it is classified correctly and survives every attack considered, and a success
at a budget carries to every larger budget, because the same ``x_adv`` is feasible there.

Reference:
    Carlini et al. 2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705 (sanity checks);
    Croce & Hein 2020, AutoAttack's ``robust_flags``; reliability-tests.md EVAL-05, EVAL-11.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from trustlab.reports.kinds import Cell, record_kinds
from trustlab.reports.runs import AttackView, RunView, norm_label

__all__ = [
    "EpsCurve",
    "accuracy",
    "worst_case",
    "accuracy_vs_eps",
    "attack_families",
    "per_class_accuracy",
    "robustness_matrix",
    "default_threat",
    "select_attacks",
    "same_eps",
]

Record = Mapping[str, Any]


class EpsCurve(NamedTuple):
    """Robust accuracy against the budget for one attack family.

    Attributes:
        eps: the budgets, ascending (``0`` first when the clean point was added).
        acc: robust accuracy with successes carried to larger budgets: non-increasing by construction.
        raw: robust accuracy as each evaluation measured it (what the ``non_monotone_in_eps`` check reads).
        n: the examples every evaluation shares (the curve is computed on those).
    """

    eps: np.ndarray
    acc: np.ndarray
    raw: np.ndarray
    n: int


def same_eps(a: float, b: float) -> bool:
    """Budgets equal up to float rounding (``0.1 + 0.2`` is ``0.3``)."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def accuracy(records: Sequence[Record], key: str = "correct") -> float:
    """Mean of the boolean field ``key`` over ``records``.

    Raises:
        ValueError: ``records`` is empty or a row lacks ``key``.
    """
    if len(records) == 0:
        raise ValueError(f"records is empty; can't compute accuracy of {key!r}")
    missing = sum(1 for r in records if key not in r)
    if missing:
        raise ValueError(f"{missing} of {len(records)} records lack the field {key!r}")
    return sum(bool(r[key]) for r in records) / len(records)


def worst_case(records_by_attack: Mapping[str, Sequence[Record]]) -> list[dict[str, Any]]:
    """Per-example worst case over several attacks (EVAL-11).

    An example is robust when it is classified correctly and robust under every attack. Examples are matched
    by ``idx``; only those that every attack evaluated are kept (so ``len`` of the result is the ``n`` that
    the worst-case accuracy is over).

    Args:
        records_by_attack: attack id -> its records (``idx, y, correct, robust``).

    Returns:
        One row per shared example, sorted by ``idx``: ``idx, y, correct, robust, broken_by`` (the ids of the
        attacks it did not survive).

    Raises:
        ValueError: no attacks, or an attack with no records.
    """
    if not records_by_attack:
        raise ValueError("records_by_attack is empty; need at least one attack's records")
    by_id: dict[str, dict[int, Record]] = {}
    for name, records in records_by_attack.items():
        if len(records) == 0:
            raise ValueError(f"attack {name!r} has no records")
        by_id[name] = {int(r["idx"]): r for r in records}
    shared = set.intersection(*(set(rows) for rows in by_id.values()))
    out = []
    for i in sorted(shared):
        rows = {name: rows[i] for name, rows in by_id.items()}
        first = next(iter(rows.values()))
        correct = all(bool(r["correct"]) for r in rows.values())
        broken = [name for name, r in rows.items() if not (bool(r["correct"]) and bool(r["robust"]))]
        out.append({"idx": i, "y": int(first["y"]), "correct": correct, "robust": correct and not broken,
                    "broken_by": broken})
    return out


def attack_families(attacks: Sequence[AttackView]) -> dict[tuple[str, float], list[AttackView]]:
    """Group evaluations by (attack name, norm): each group is one accuracy-vs-eps curve."""
    groups: dict[tuple[str, float], list[AttackView]] = {}
    for a in attacks:
        groups.setdefault((a.name, a.p), []).append(a)
    return groups


def accuracy_vs_eps(attacks: Sequence[AttackView], *, include_clean: bool = True, any_attack: bool = False,
                    only: Collection[int] | None = None) -> EpsCurve:
    """Robust accuracy at each budget of one attack family, monotone by construction (EVAL-05b).

    Several evaluations at the same budget (say PGD with 10 and 40 steps) are combined per example by
    :func:`worst_case`. The carried curve marks an example broken at ``eps_j`` if any evaluation broke it at
    some ``eps_i <= eps_j``; the raw curve does not carry.

    Args:
        attacks: evaluations sharing the attack name and norm, at one or more budgets.
        include_clean: prepend ``eps = 0`` with the clean accuracy when no evaluation is at ``eps = 0``.
        any_attack: allow evaluations of different attacks (of one norm): the curve is then the per-example worst
            case over every attack at each budget, the empirical upper bound of robust accuracy.
        only: keep only the examples with these ``idx`` (those a certificate covers, say).

    Returns:
        An :class:`EpsCurve` over the examples every evaluation shares (within ``only``).

    Raises:
        ValueError: no evaluations, evaluations of different norms (or attacks, unless ``any_attack``), or no
            shared example.
    """
    if len(attacks) == 0:
        raise ValueError("attacks is empty; need at least one evaluation")
    families = sorted({("*" if any_attack else a.name, norm_label(a.p)) for a in attacks})
    if len(families) > 1:
        raise ValueError(f"attacks must share the {'norm' if any_attack else 'attack name and norm'}, got {families}")
    levels: list[tuple[float, list[AttackView]]] = []
    for a in sorted(attacks, key=lambda v: v.eps):
        if levels and same_eps(levels[-1][0], a.eps):
            levels[-1][1].append(a)
        else:
            levels.append((a.eps, [a]))
    cases = [{r["idx"]: r for r in worst_case({v.id: v.records for v in views})} for _, views in levels]
    shared = sorted(set.intersection(*(set(c) for c in cases), *([set(map(int, only))] if only is not None else [])))
    if not shared:
        raise ValueError(f"the evaluations {[a.id for a in attacks]} share no example idx")
    robust = np.array([[c[i]["robust"] for i in shared] for c in cases], dtype=bool)  # (E, N)
    eps = np.array([e for e, _ in levels], dtype=float)
    if include_clean and eps[0] > 0:
        correct = np.array([[cases[0][i]["correct"] for i in shared]], dtype=bool)  # (1, N)
        robust = np.concatenate([correct, robust])
        eps = np.concatenate([[0.0], eps])
    carried = np.logical_and.accumulate(robust, axis=0)
    return EpsCurve(eps=eps, acc=carried.mean(axis=1), raw=robust.mean(axis=1), n=len(shared))


def per_class_accuracy(records: Sequence[Record], num_classes: int, key: str = "correct") -> np.ndarray:
    """Accuracy of the field ``key`` within each true class.

    Returns:
        Shape ``(num_classes,)``; ``nan`` for a class with no examples.

    Raises:
        ValueError: ``num_classes < 1`` or a label outside ``[0, num_classes)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y = np.array([int(r["y"]) for r in records], dtype=np.int64)
    hit = np.array([bool(r[key]) for r in records], dtype=float)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    total = np.bincount(y, minlength=num_classes).astype(float)
    good = np.bincount(y, weights=hit, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, good / np.maximum(total, 1), np.nan)


def select_attacks(run: RunView, name: str, eps: float, p: float | None = None) -> list[AttackView]:
    """The run's evaluations with attack ``name`` at budget ``eps`` (and norm ``p`` when given)."""
    return [a for a in run.attacks if a.name == name and same_eps(a.eps, eps) and (p is None or a.p == p)]


def default_threat(runs: Sequence[RunView], eps: float | None = None) -> tuple[float, float] | None:
    """The (eps, p) to report at: the one the most runs were evaluated at; ties go to the one with more
    evaluations, then the runs' training budget, then the larger eps and L-inf. None if nothing was evaluated.

    With ``eps`` given, only the norm is chosen.
    """
    keys: list[tuple[float, float]] = []
    runs_at: Counter[int] = Counter()
    evals_at: Counter[int] = Counter()
    for run in runs:
        seen = set()
        for a in run.attacks:
            if a.eps <= 0 or (eps is not None and not same_eps(a.eps, eps)):
                continue
            j = next((j for j, k in enumerate(keys) if same_eps(k[0], a.eps) and k[1] == a.p), None)
            if j is None:
                keys.append((a.eps, a.p))
                j = len(keys) - 1
            seen.add(j)
            evals_at[j] += 1
        runs_at.update(seen)
    if not keys:
        return None
    trained = {r.train_threat for r in runs if r.defense != "none" and r.train_threat is not None}

    def trained_at(j: int) -> bool:
        return any(same_eps(e, keys[j][0]) and p == keys[j][1] for e, p in trained)

    best = max(range(len(keys)), key=lambda j: (runs_at[j], evals_at[j], trained_at(j), keys[j][0], keys[j][1]))
    return keys[best]


def robustness_matrix(
    runs: Sequence[RunView],
    eval_types: Sequence[str] | None = None,
    *,
    eps: float | None = None,
    p: float | None = None,
) -> list[dict[str, Any]]:
    """The train-defense x evaluation matrix at one threat model: one row per run.

    Each column is a metric of a registered record kind (:mod:`trustlab.reports.kinds`): ``clean`` from the
    training kind; one column per attack name from the attack kind, whose cell is the robust accuracy under the
    run's evaluations of that attack at ``eps`` (several configurations, such as PGD with different steps or
    restarts, are combined per example and ``notes`` says so; an evaluation on fewer examples than the others,
    such as the convergence check's, is left out and named in ``notes``). ``worst`` is the per-example worst
    case over every attack column shown (EVAL-11); columns that are not attacks stay out of it.

    Args:
        runs: the runs, one row each.
        eval_types: the columns, e.g. ``("clean", "fgsm", "pgd", "linear")``; None: each kind's default
            columns, in kind order (``fgsm``, ``pgd``, ``clean`` for today's kinds).
        eps: the budget; defaults to the one most runs were evaluated at.
        p: the norm; defaults to the most common one at ``eps``.

    Returns:
        Rows ``run, train, eps, p, <eval_types...>, worst, n, notes``; a cell is None where no kind measured it
        for the run. ``n`` is the number of examples the worst case is over.
    """
    kinds = record_kinds()
    if eval_types is None:
        eval_types = tuple(dict.fromkeys(c for kind in kinds for c in kind.columns(runs)))
    if eps is None or p is None:
        chosen = default_threat(runs, eps)
        if chosen is not None:
            eps, p = chosen
    rows = []
    for run in runs:
        cells: dict[str, Cell] = {}
        for kind in reversed(kinds):  # the first kind in order wins a column two kinds fill
            cells.update(kind.metrics(run, eps, p))
        row: dict[str, Any] = {"run": run.name, "train": run.label, "eps": eps,
                               "p": norm_label(p) if p is not None else None}
        used: dict[str, Sequence[Record]] = {}
        notes: list[str] = []
        for column in eval_types:
            cell = cells.get(column)
            row[column] = cell.value if cell is not None else None
            if cell is not None:
                notes += cell.notes
                used.update(cell.cases)
        if used:
            cases = worst_case(used)
            row["worst"], row["n"] = accuracy(cases, "robust"), len(cases)
            if len(cases) < len(run.records):
                notes.append(f"worst case over the {len(cases)} of {len(run.records)} examples every attack saw")
        else:
            row["worst"], row["n"] = None, len(run.records)
            notes.append("no attack evaluation at this threat model")
        row["notes"] = "; ".join(notes)
        rows.append(row)
    return rows
