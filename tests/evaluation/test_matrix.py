"""``run_matrix``: trains or reuses runs, evaluates, diagnoses and reports; the recipes in configs/ are valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trustlab.cli.config import load_toml
from trustlab.evaluation.matrix import MatrixConfig, matrix_configs, run_matrix
from trustlab.reports.report import SECTION_IDS
from trustlab.runs.folder import LOCK
from trustlab.training import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _snapshot(root: Path) -> dict[Path, int]:
    """Modification times of the data files (a run's lock file changes whenever a command takes it)."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "report" not in p.parts and p.name != LOCK}


def test_matrix_trains_evaluates_reports_and_reuses(tmp_path):
    base = TrainConfig(dataset="digits", model="mlp", epochs=2, subset=300, batch_size=50)
    mc = MatrixConfig(eps=0.1, train=("none", "fgsm"), pgd_steps=5, eps_grid=(0.05,), curve_subset=100)
    result = run_matrix(base, mc, tmp_path, progress=False)
    assert [r["train"].split()[0] for r in result.rows] == ["none", "fgsm"]
    for row in result.rows:
        assert 0 <= row["worst"] <= min(row["fgsm"], row["pgd"]) <= row["clean"] <= 1
    page = result.report.read_text()
    assert all(f'id="{sid}"' in page for sid in SECTION_IDS)
    assert "| run |" in result.markdown
    # a readable prefix, then a hash of the full configuration (seed and subset included)
    attacks = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "train-none" / "attacks").iterdir())
    assert attacks == sorted([
        "fgsm-linf-eps0.1", "fgsm-linf-eps0.05", "pgd-linf-eps0.1-restarts1-stepsize0.05-steps5",
        "pgd-linf-eps0.1-restarts1-stepsize0.05-steps10", "pgd-linf-eps0.05-restarts1-stepsize0.025-steps5"])
    before = _snapshot(tmp_path)
    again = run_matrix(base, mc, tmp_path, progress=False)
    assert _snapshot(tmp_path) == before  # nothing retrained or re-attacked
    assert again.rows == result.rows


def test_matrix_refuses_to_reuse_a_run_with_another_config(tmp_path):
    base = TrainConfig(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50)
    mc = MatrixConfig(eps=0.1, train=("none",), evals=("clean", "fgsm"), eps_grid=())
    run_matrix(base, mc, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        run_matrix(dataclasses.replace(base, lr=0.1), mc, tmp_path, progress=False)


@pytest.mark.parametrize("bad, error, match", [
    (dict(eps=0), ValueError, "eps must be finite and > 0, got 0"),
    (dict(train=("none", "pgd2")), ValueError, r"train must be a non-empty subset of \['none', 'fgsm', 'fgsm-rs'"),
    (dict(evals=()), ValueError, r"evals must be a non-empty subset of \['clean', 'fgsm', 'pgd'\], got \[\]"),
    (dict(pgd_steps=0), ValueError, "pgd_steps must be >= 1, got 0"),
    (dict(curve_subset=0), ValueError, "curve_subset must be >= 1, got 0"),
    (dict(eps_grid=(-0.1,)), ValueError, "eps_grid value must be finite and > 0, got -0.1"),
    (dict(p=1), ValueError, "p must be inf or 2"),
    (dict(defense_options={"trades": {"beta": 1.0}}), ValueError, r"defense_options name defenses \['trades'\]"),
    (dict(defense_options={"pgd": {"beta": 1.0}}), ValueError, r"unknown option\(s\) \['beta'\] for defense 'pgd'"),
])
def test_inp01_bad_matrix_config(bad, error, match):
    with pytest.raises(error, match=match):
        MatrixConfig(**bad)


def test_matrix_evaluation_flags_do_not_change_the_training():
    """The old bug: --pgd-steps/--pgd-step-size (evaluation settings) were also passed into the training config,
    silently changing the trained models and breaking run reuse."""
    recipe = {"train": {"dataset": "digits", "pgd_steps": 7}, "matrix": {"eps": 0.1, "train": ["none", "pgd"]}}
    base, mc = matrix_configs(recipe, {"pgd_steps": 20, "pgd_step_size": 0.01, "epochs": 3})
    assert (mc.pgd_steps, mc.pgd_step_size) == (20, 0.01)
    assert mc.defense("pgd").steps == 7 and mc.defense("pgd").step_size is None
    assert base.epochs == 3 and base.eps == mc.eps
    plain, _ = matrix_configs({"matrix": {"eps": 0.1}}, {"pgd_steps": 99})
    assert plain == matrix_configs({"matrix": {"eps": 0.1}}, {})[0]


@pytest.mark.parametrize("recipe, match", [
    ({"train": {"defense": "pgd"}}, r"\[train\] may not set \['defense'\]"),
    ({"matrix": {"bogus": 1}}, r"unknown \[matrix\] keys \['bogus'\]"),
    ({"eval": {}}, r"unknown tables \['eval'\]"),
    ({"train": {"fgsm_rs_step_size": 0.2}, "matrix": {"train": ["none"]}}, r"defense_options name defenses \['fgsm-rs'\]"),
])
def test_inp19_bad_matrix_recipes_are_named(recipe, match):
    with pytest.raises(ValueError, match=match):
        matrix_configs(recipe, {})


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_in_configs_is_valid(recipe):
    data = load_toml(recipe)
    if "matrix" in data:
        train, mc = matrix_configs(data, {})
        assert train.eps == mc.eps and all(mc.defense(name) for name in mc.train)
    else:
        assert set(data) == {"train"}
        train = TrainConfig.from_dict(load_toml(recipe, section="train"))
        assert train.dataset == data["train"]["dataset"]
