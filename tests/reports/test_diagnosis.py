"""Each diagnosis flag fires on a constructed positive case and stays silent on a healthy run (EVAL-05a,
EVAL-06, EVAL-08, AT-03, label leaking)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trustlab.reports.diagnosis import CHECKS, ITERATIVE, SINGLE_STEP, Flag, diagnose, diagnose_run, step_type
from trustlab.reports.runs import AttackView, RunView

N = 20


def records(robust: int, *, correct: int = N, adv_correct: int | None = None) -> list[dict]:
    """``N`` rows: the first ``correct`` classified right, the first ``robust`` of those surviving the attack.

    ``adv_correct`` (default ``robust``) counts rows whose adversarial prediction is right; beyond ``correct``
    these are misclassified clean points that the attack made correct (label leaking).
    """
    adv_correct = robust if adv_correct is None else adv_correct
    rows = []
    for i in range(N):
        ok, adv_ok = i < correct, i < robust or (i >= correct and i - correct < adv_correct - robust)
        rows.append({"idx": i, "y": i % 5, "pred": i % 5 if ok else (i + 1) % 5, "correct": ok,
                     "adv_pred": i % 5 if adv_ok else (i + 2) % 5, "adv_correct": adv_ok, "robust": ok and adv_ok,
                     "dist": 0.1, "confidence": 0.9, "adv_confidence": 0.7})
    return rows


def attack(name: str, eps: float, rows: list[dict], **params) -> AttackView:
    pid = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return AttackView(id=f"{name}-linf-eps{eps:g}-{pid}", name=name, eps=eps, p=math.inf,
                      threat={"eps": eps, "p": "inf", "lower": 0.0, "upper": 1.0}, params=params, seed=0,
                      records=tuple(rows), summary={}, config={}, path=Path("."))


def run(attacks: list[AttackView], *, defense: str = "pgd", history: list[dict] | None = None,
        name: str = "run") -> RunView:
    clean = [{k: r[k] for k in ("idx", "y", "pred", "correct")} for r in records(N)]
    cfg = {"defense": defense, "eps": 0.1, "p": "inf", "dataset": "digits"}
    return RunView(name=name, path=Path(name), config={"config": cfg}, summary={"history": history or []},
                   records=tuple(clean), attacks=tuple(attacks))


def pgd(eps: float, rows: list[dict], steps: int = 10, loss: str = "ce") -> AttackView:
    return attack("pgd", eps, rows, steps=steps, step_size=2.5 * eps / steps, restarts=1, loss=loss,
                  random_start=True)


def healthy(defense: str = "pgd") -> RunView:
    """FGSM > PGD by a little, PGD converged, accuracy falling with eps."""
    return run([attack("fgsm", 0.1, records(12)), pgd(0.1, records(10)), pgd(0.1, records(10), steps=20),
                attack("fgsm", 0.2, records(8)), pgd(0.2, records(5)), pgd(0.2, records(5), steps=40)],
               defense=defense)


def codes(flags: list[Flag]) -> list[str]:
    return [f.code for f in flags]


def test_healthy_run_raises_no_flag():
    assert diagnose([healthy()]) == []
    assert diagnose([healthy("fgsm")]) == []


def test_label_leaking_fires_when_fgsm_beats_clean():
    leaky = run([attack("fgsm", 0.1, records(14, correct=14, adv_correct=18))])  # 4 wrong points fixed by FGSM
    (flag,) = diagnose([leaky])
    assert flag.code == "label_leaking" and flag.evidence["fgsm_acc"] == 0.9 and flag.evidence["clean_acc"] == 0.7
    within_one = run([attack("fgsm", 0.1, records(14, correct=14, adv_correct=15))])
    assert diagnose([within_one]) == []


def test_catastrophic_overfitting_fires_for_fgsm_training_only():
    views = [attack("fgsm", 0.1, records(18)), pgd(0.1, records(2))]  # 80 pp gap
    (flag,) = diagnose([run(views, defense="fgsm")])
    assert flag.code == "catastrophic_overfitting" and flag.evidence["fgsm_acc"] - flag.evidence["pgd_acc"] > 0.3
    assert diagnose([run(views, defense="pgd")]) == []  # PGD-AT stays silent (AT-03)
    assert codes(diagnose([run(views, defense="none")], single_step_defenses=None)) == ["catastrophic_overfitting"]
    small_gap = [attack("fgsm", 0.1, records(12)), pgd(0.1, records(7))]  # 25 pp
    assert diagnose([run(small_gap, defense="fgsm")]) == []


def test_catastrophic_overfitting_from_training_accuracy_when_no_fgsm_evaluation():
    history = [{"epoch": 1, "train_acc": 0.5}, {"epoch": 2, "train_acc": 0.9}]
    (flag,) = diagnose([run([pgd(0.1, records(2))], defense="fgsm-rs", history=history)])
    assert flag.code == "catastrophic_overfitting" and "training" in flag.evidence["source"]
    assert diagnose([run([pgd(0.1, records(2))], defense="pgd", history=history)]) == []
    assert diagnose([run([pgd(0.2, records(2))], defense="fgsm", history=history)]) == []  # not the training eps


def test_iterative_weaker_than_single_step_fires():
    (flag,) = diagnose([run([attack("fgsm", 0.1, records(6)), pgd(0.1, records(12))])])
    assert flag.code == "iterative_weaker_than_single_step" and flag.severity == "error"
    assert flag.evidence["pgd_robust"] == 12 and flag.evidence["fgsm_robust"] == 6
    assert diagnose([run([attack("fgsm", 0.1, records(6)), pgd(0.1, records(7))])]) == []  # one example: noise


def test_iterative_check_uses_the_strongest_pgd_per_example():
    # a weak 2-step PGD alone would look weaker than FGSM; together with 40 steps it is not
    views = [attack("fgsm", 0.1, records(6)), pgd(0.1, records(12), steps=2, loss="dlr"), pgd(0.1, records(4), 40)]
    assert "iterative_weaker_than_single_step" not in codes(diagnose([run(views)]))


def test_non_monotone_in_eps_fires_on_raw_rise():
    (flag,) = diagnose([run([pgd(0.1, records(4)), pgd(0.2, records(9)), pgd(0.3, records(1))])])
    assert flag.code == "non_monotone_in_eps" and flag.severity == "error"
    assert flag.evidence["rises"][0]["from_eps"] == 0.1 and flag.evidence["rises"][0]["to_eps"] == 0.2
    assert diagnose([run([pgd(0.1, records(4)), pgd(0.2, records(5))])]) == []  # one example: tolerated


def test_pgd_not_converged_fires_when_doubling_steps_changes_success():
    (flag,) = diagnose([run([pgd(0.1, records(10)), pgd(0.1, records(8), steps=20)])])
    assert flag.code == "pgd_not_converged" and flag.evidence["steps"] == [10, 20]
    assert flag.evidence["success_change"] == pytest.approx(0.1) and "not converged" in flag.message
    (worse,) = diagnose([run([pgd(0.1, records(10)), pgd(0.1, records(11), steps=20)])])
    assert "EVAL-06" in worse.message
    assert diagnose([run([pgd(0.1, records(10)), pgd(0.1, records(8), steps=15)])]) == []  # not 2x the steps
    assert diagnose([run([pgd(0.1, records(10)), pgd(0.1, records(8), steps=20, loss="dlr")])]) == []


def test_flags_name_the_run_and_every_check_is_described():
    flags = diagnose([healthy(), run([pgd(0.1, records(4)), pgd(0.2, records(9))], name="bad")])
    assert [(f.run, f.code) for f in flags] == [("bad", "non_monotone_in_eps")]
    assert set(CHECKS) == {"label_leaking", "catastrophic_overfitting", "iterative_weaker_than_single_step",
                           "non_monotone_in_eps", "pgd_not_converged", "blackbox_beats_whitebox"}
    with pytest.raises(ValueError, match="tolerance"):
        diagnose_run(healthy(), tolerance=-1)


# --- single-step or iterative, from the recorded config --------------------------------------------------------

def apgd(eps: float, rows: list[dict], steps: int = 100) -> AttackView:
    return attack("apgd", eps, rows, steps=steps, restarts=1, loss="ce")


def test_step_type_reads_the_recorded_steps_before_the_name():
    assert [step_type(v) for v in (attack("fgsm", 0.1, records(1)), attack("fgsm-rs", 0.1, records(1)),
                                   pgd(0.1, records(1)), attack("pgd", 0.1, records(1)), apgd(0.1, records(1)),
                                   pgd(0.1, records(1), steps=1), attack("linear", 0.1, records(1)),
                                   attack("newattack", 0.1, records(1)))] == [
        SINGLE_STEP, SINGLE_STEP, ITERATIVE, ITERATIVE, ITERATIVE, SINGLE_STEP, None, SINGLE_STEP]


def test_an_iterative_attack_of_another_name_is_checked_like_pgd():
    (flag,) = diagnose([run([attack("fgsm", 0.1, records(6)), apgd(0.1, records(12))])])
    assert flag.code == "iterative_weaker_than_single_step" and flag.evidence["pgd_robust"] == 12
    assert "APGD accuracy" in flag.message and "FGSM accuracy" in flag.message
    (flag,) = diagnose([run([attack("fgsm", 0.1, records(18)), apgd(0.1, records(2))], defense="fgsm")])
    assert flag.code == "catastrophic_overfitting"
    # with PGD too, each example counts as broken if either iterative attack broke it
    views = [attack("fgsm", 0.1, records(6)), pgd(0.1, records(12)), apgd(0.1, records(5))]
    assert diagnose([run(views)]) == []


def test_single_step_attacks_are_found_by_steps_and_the_linear_attack_is_left_out():
    one_step_pgd = pgd(0.1, records(6), steps=1)  # a 1-step PGD plays FGSM's role
    (flag,) = diagnose([run([one_step_pgd, pgd(0.1, records(12))])])
    assert flag.code == "iterative_weaker_than_single_step" and flag.evidence["fgsm_robust"] == 6
    (flag,) = diagnose([run([attack("fgsm-rs", 0.1, records(14, correct=14, adv_correct=18))])])
    assert flag.code == "label_leaking" and "FGSM-RS accuracy" in flag.message
    # the closed-form attack is exact, not a gradient step: PGD is not compared with it
    assert diagnose([run([attack("linear", 0.1, records(2)), pgd(0.1, records(12))])]) == []


def test_convergence_pairs_only_evaluations_of_the_same_attack():
    params = dict(restarts=1, loss="ce")
    views = [attack("pgd", 0.1, records(10), steps=10, **params), attack("apgd", 0.1, records(8), steps=20, **params)]
    assert diagnose([run(views)]) == []
    (flag,) = diagnose([run([apgd(0.1, records(10), steps=10), apgd(0.1, records(8), steps=20)])])
    assert flag.code == "pgd_not_converged" and "APGD steps" in flag.message


# --- gradient-free against white-box (EVAL-09), restarts doubled ------------------------------------------------

def square(eps: float, rows: list[dict]) -> AttackView:
    return attack("square", eps, rows, queries=5000, p_init=0.8, loss="margin")


def test_eval09_blackbox_beats_whitebox_fires_when_square_breaks_what_pgd_missed():
    (flag,) = diagnose([run([pgd(0.1, records(10)), apgd(0.1, records(12)), square(0.1, records(7))])])
    assert flag.code == "blackbox_beats_whitebox" and flag.severity == "error" and flag.evidence["beaten"] == 3
    assert flag.evidence["eps"] == 0.1 and "BPDA" in flag.message
    assert diagnose([run([pgd(0.1, records(10)), square(0.1, records(9))])]) == []  # one example: tolerated
    assert diagnose([run([pgd(0.1, records(10)), square(0.2, records(2))])]) == []  # another eps: not compared


def test_square_plays_neither_role_of_the_single_step_checks():
    assert step_type(square(0.1, records(1))) is None
    # Square far weaker than PGD is no "iterative weaker than single-step" flag, nor label leaking
    assert diagnose([run([pgd(0.1, records(4)), square(0.1, records(15))])]) == []


def test_not_converged_fires_when_doubling_the_restarts_changes_success():
    one = attack("apgd", 0.1, records(12), steps=100, restarts=1, loss="ce")
    two = attack("apgd", 0.1, records(10), steps=100, restarts=2, loss="ce")
    (flag,) = diagnose([run([one, two])])
    assert flag.code == "pgd_not_converged" and flag.evidence["restarts"] == [1, 2]
    assert "APGD restarts" in flag.message and "increase the restarts" in flag.message


def ensemble(eps: float, rows: list[dict], broken_by: dict[int, str]) -> AttackView:
    """An ensemble evaluation whose records say which member broke each example."""
    rows = [{**r, "broken_by": broken_by.get(r["idx"]) if r["correct"] and not r["robust"] else None} for r in rows]
    return attack("ensemble", eps, rows, version="standard-v1")


def test_eval09_square_inside_the_ensemble_breaking_what_white_box_missed_is_flagged():
    """On the FGSM-RS MNIST model the ensemble's Square broke 11 of 500 points its gradient members missed; the
    flag must come from the ensemble's own records, and the ensemble is no single-step attack to compare."""
    broken = {i: "apgd-ce" for i in range(6, 10)} | {i: "square" for i in range(10, 13)}  # robust: 0..5
    flags = diagnose([run([pgd(0.1, records(13)), ensemble(0.1, records(6), broken)])])
    assert codes(flags) == ["blackbox_beats_whitebox"]
    assert flags[0].evidence["beaten"] == 3 and flags[0].evidence["idx"] == [10, 11, 12]
    only_white = {i: "apgd-t" for i in range(6, 13)}
    assert diagnose([run([pgd(0.1, records(13)), ensemble(0.1, records(6), only_white)])]) == []
    assert step_type(ensemble(0.1, records(6), broken)) is None
