"""Metrics over hand-made records: worst case per example (EVAL-11), monotone curves (EVAL-05b), per-class
accuracy, the robustness matrix, and the Markdown tables that show them (SEC-12 escaping)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trustlab.reports.metrics import (
    accuracy, accuracy_vs_eps, default_threat, per_class_accuracy, robustness_matrix, worst_case,
)
from trustlab.reports.runs import AttackView, RunView, load_run
from trustlab.reports.tables import escape_markdown, markdown_table, matrix_markdown, sanitize_text


def attack_records(broken: set[int], n: int = 4, *, wrong: frozenset[int] = frozenset(), ys=None) -> list[dict]:
    """Records of one attack over examples 0..n-1; ``broken`` lose their label, ``wrong`` were never right."""
    rows = []
    for i in range(n):
        y = ys[i] if ys is not None else i % 3
        correct = i not in wrong
        adv_correct = correct and i not in broken
        rows.append({"idx": i, "y": y, "pred": y if correct else (y + 1) % 3, "correct": correct,
                     "adv_pred": y if adv_correct else (y + 1) % 3, "adv_correct": adv_correct,
                     "robust": correct and adv_correct, "dist": 0.1, "confidence": 0.9, "adv_confidence": 0.8})
    return rows


def view(name: str, eps: float, records: list[dict], *, p: float = math.inf, id: str | None = None,
         **params) -> AttackView:
    return AttackView(id=id or f"{name}-eps{eps:g}-{sorted(params.items())}", name=name, eps=eps, p=p,
                      threat={"eps": eps, "p": "inf" if p == math.inf else p, "lower": 0.0, "upper": 1.0},
                      params=params, seed=0, records=tuple(records), summary={}, config={}, path=Path("."))


def run_view(name: str, attacks: list[AttackView], *, n: int = 4, defense: str = "none") -> RunView:
    clean = [{k: r[k] for k in ("idx", "y", "pred", "correct")} for r in attack_records(set(), n)]
    return RunView(name=name, path=Path(name), config={"config": {"defense": defense, "eps": 0.1, "p": "inf"}},
                   summary={}, records=tuple(clean), attacks=tuple(attacks))


def test_accuracy_counts_true_values_and_rejects_empty():
    assert accuracy(attack_records({0}), "robust") == 0.75
    with pytest.raises(ValueError, match="empty"):
        accuracy([], "robust")
    with pytest.raises(ValueError, match="'robust'"):
        accuracy([{"idx": 0}], "robust")


def test_worst_case_is_mean_of_min_not_min_of_means():
    """EVAL-11: A breaks {1, 2}, B breaks {3}, 4 examples -> 1/4, not min(2/4, 3/4)."""
    a, b = attack_records({1, 2}), attack_records({3})
    assert accuracy(a, "robust") == 0.5 and accuracy(b, "robust") == 0.75  # per-attack numbers
    cases = worst_case({"A": a, "B": b})
    assert accuracy(cases, "robust") == 0.25
    assert [c["broken_by"] for c in cases] == [[], ["A"], ["A"], ["B"]]


def test_worst_case_counts_misclassified_as_not_robust_and_keeps_shared_examples():
    a = attack_records(set(), 4, wrong=frozenset({0}))
    b = attack_records(set(), 3)  # evaluated on a subset
    cases = worst_case({"A": a, "B": b})
    assert [c["idx"] for c in cases] == [0, 1, 2]
    assert accuracy(cases, "robust") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="empty"):
        worst_case({})


def test_carried_curve_is_non_increasing_even_when_raw_is_not():
    """EVAL-05b: a success at a small eps stays a success at every larger eps."""
    views = [view("pgd", 0.1, attack_records({0, 1})), view("pgd", 0.2, attack_records({2})),  # raw rises
             view("pgd", 0.3, attack_records({3}))]
    curve = accuracy_vs_eps(views)
    np.testing.assert_allclose(curve.eps, [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(curve.raw, [1.0, 0.5, 0.75, 0.75])
    np.testing.assert_allclose(curve.acc, [1.0, 0.5, 0.25, 0.0])
    assert np.all(np.diff(curve.acc) <= 0) and curve.n == 4


def test_curve_combines_configurations_at_one_eps_per_example():
    views = [view("pgd", 0.1, attack_records({0}), steps=10), view("pgd", 0.1, attack_records({1}), steps=40)]
    curve = accuracy_vs_eps(views, include_clean=False)
    np.testing.assert_allclose(curve.eps, [0.1])
    np.testing.assert_allclose(curve.acc, [0.5])


def test_curve_rejects_mixed_families():
    with pytest.raises(ValueError, match="share the attack name and norm"):
        accuracy_vs_eps([view("pgd", 0.1, attack_records(set())), view("fgsm", 0.2, attack_records(set()))])
    with pytest.raises(ValueError, match="empty"):
        accuracy_vs_eps([])


def test_per_class_accuracy_and_empty_class_is_nan():
    rows = attack_records({0, 3}, 6, ys=[0, 0, 1, 1, 1, 0])
    acc = per_class_accuracy(rows, 3, "robust")
    np.testing.assert_allclose(acc[:2], [2 / 3, 2 / 3])
    assert np.isnan(acc[2])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        per_class_accuracy(rows, 1)


def test_robustness_matrix_uses_strongest_pgd_per_example_and_says_so():
    run = run_view("r", [view("fgsm", 0.1, attack_records({0})), view("pgd", 0.1, attack_records({1}), steps=10),
                         view("pgd", 0.1, attack_records({2}), steps=40),
                         view("pgd", 0.3, attack_records({0, 1, 2, 3}))])
    (row,) = robustness_matrix([run], eps=0.1)
    assert row["clean"] == 1.0 and row["fgsm"] == 0.75 and row["pgd"] == 0.5 and row["worst"] == 0.25
    assert row["p"] == "linf" and row["n"] == 4
    assert "worst case of 2 configurations" in row["notes"]


def test_robustness_matrix_defaults_to_the_shared_threat_and_handles_missing_attacks():
    a = run_view("a", [view("pgd", 0.1, attack_records({0})), view("pgd", 0.3, attack_records({0, 1}))])
    b = run_view("b", [view("pgd", 0.3, attack_records(set()))])
    c = run_view("c", [])
    assert default_threat([a, b, c]) == (0.3, math.inf)
    rows = robustness_matrix([a, b, c])
    assert [r["pgd"] for r in rows] == [0.5, 1.0, None]
    assert rows[2]["worst"] is None and "no attack evaluation" in rows[2]["notes"]
    assert rows[2]["fgsm"] is None


def test_markdown_table_formats_and_escapes_cells():
    rows = [{"run": "a|b\nc\x1b[31mred\x1b[0m", "acc": 0.1234, "n": 5, "x": None},
            {"run": "[click](javascript:alert(1)) <script>", "acc": float("nan"), "n": 6, "x": True}]
    text = markdown_table(rows, ["run", "acc", "n", "x"], percent={"acc"})
    lines = text.splitlines()
    assert len(lines) == 4  # the newline in a cell did not break the table
    assert r"a\|b cred" in lines[2] and "\x1b" not in text
    assert "12.3%" in lines[2] and "| 5 |" in lines[2] and "—" in lines[2]
    assert r"\[click\](javascript:alert(1)) \<script\>" in lines[3] and "<script>" not in text
    assert "yes" in lines[3]


def test_escape_helpers():
    assert sanitize_text("\x1b]0;title\x07ok\x1b[2J\tx") == "ok x"
    assert escape_markdown("*a* _b_ `c` $d$") == r"\*a\* \_b\_ \`c\` \$d\$"


def test_matrix_markdown_has_percent_columns_and_notes():
    run = run_view("<run>", [view("pgd", 0.1, attack_records({1}), steps=10),
                             view("pgd", 0.1, attack_records({2}), steps=40)])
    text = matrix_markdown(robustness_matrix([run], eps=0.1))
    assert "| run | train | eps | p | clean | fgsm | pgd | worst | n |" in text
    assert "50.0%" in text and "100.0%" in text and r"\<run\>" in text and "configurations" in text


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj))


def test_load_run_reads_folders_and_names_missing_files(tmp_path):
    run = tmp_path / "run"
    _write(run / "config.json", {"config": {"dataset": "digits", "defense": "pgd", "eps": 0.1, "p": "inf"},
                                 "dataset": {"name": "digits", "num_classes": 10}})
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        load_run(run)
    _write(run / "records.jsonl", [{k: r[k] for k in ("idx", "y", "pred", "correct")} for r in attack_records(set())])
    att = run / "attacks" / "pgd-linf-eps0.1-steps10"
    _write(att / "config.json", {"attack": {"attack": "pgd", "eps": 0.1, "p": "inf", "lower": 0.0, "upper": 1.0,
                                            "steps": 10, "step_size": 0.025, "restarts": 1, "loss": "ce",
                                            "random_start": True},
                                 "name": "pgd", "threat": {"eps": 0.1, "p": "inf", "lower": 0.0, "upper": 1.0},
                                 "seed": 0})
    with pytest.raises(FileNotFoundError, match="pgd-linf-eps0.1-steps10"):
        load_run(run)
    _write(att / "records.jsonl", attack_records({0}))
    rv = load_run(run)
    (a,) = rv.attacks
    assert a.name == "pgd" and a.p == math.inf and a.eps == 0.1 and a.n == 4
    assert a.params == {"steps": 10, "step_size": 0.025, "restarts": 1, "loss": "ce", "random_start": True}
    assert rv.label == "pgd (linf eps=0.1)" and rv.class_names[3] == "3" and rv.summary == {}
    (run / "records.jsonl").write_text('{"idx": 0}\n')
    with pytest.raises(ValueError, match="line 1 lacks"):
        load_run(run)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_run(tmp_path / "nowhere")


def test_matrix_cell_ignores_evaluations_on_a_subset(tmp_path):
    """A convergence check run on 2 of 4 examples must not shrink the matrix cell to those 2 examples."""
    from trustlab.reports.metrics import robustness_matrix
    from trustlab.reports.runs import load_run

    run = tmp_path / "run"
    (run / "attacks").mkdir(parents=True)
    cfg = {"config": {"dataset": "digits", "defense": "pgd", "eps": 0.1, "p": "inf", "seed": 0}}
    (run / "config.json").write_text(json.dumps(cfg))
    clean = [{"idx": i, "y": 0, "pred": 0, "correct": True, "confidence": 1.0} for i in range(4)]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    for name, steps, robust in (("full", 10, [True, True, False, True]), ("half", 20, [False, True])):
        d = run / "attacks" / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"name": "pgd", "attack": {"steps": steps, "step_size": 0.01},
                                                   "threat": {"eps": 0.1, "p": "inf", "lower": 0.0, "upper": 1.0},
                                                   "seed": 0}))
        rows = [{"idx": i, "y": 0, "pred": 0, "correct": True, "adv_pred": 0 if r else 1, "adv_correct": r,
                 "robust": r, "dist": 0.1, "confidence": 1.0, "adv_confidence": 1.0} for i, r in enumerate(robust)]
        (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "summary.json").write_text(json.dumps({"n": len(rows)}))
    (row,) = robustness_matrix([load_run(run)], ("clean", "pgd"), eps=0.1)
    assert row["pgd"] == 0.75 and row["n"] == 4 and "half" in row["notes"]
