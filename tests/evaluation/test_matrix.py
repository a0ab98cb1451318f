"""``run_matrix``: trains or reuses runs, evaluates, diagnoses and reports; the recipes in configs/ are valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trustlab.cli.config import load_toml
from trustlab.evaluation.matrix import MatrixConfig, run_matrix
from trustlab.reports.report import SECTION_IDS
from trustlab.training import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "report" not in p.parts}


def test_matrix_trains_evaluates_reports_and_reuses(tmp_path):
    base = TrainConfig(dataset="digits", model="mlp", epochs=2, subset=300, batch_size=50, pgd_steps=3)
    mc = MatrixConfig(eps=0.1, train=("none", "fgsm"), pgd_steps=5, eps_grid=(0.05,), curve_subset=100)
    result = run_matrix(base, mc, tmp_path, progress=False)
    assert [r["train"].split()[0] for r in result.rows] == ["none", "fgsm"]
    for row in result.rows:
        assert 0 <= row["worst"] <= min(row["fgsm"], row["pgd"]) <= row["clean"] <= 1
    page = result.report.read_text()
    assert all(f'id="{sid}"' in page for sid in SECTION_IDS)
    assert "| run |" in result.markdown
    attacks = sorted(p.name for p in (tmp_path / "train-none" / "attacks").iterdir())
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


@pytest.mark.parametrize("bad", [dict(eps=0), dict(train=("none", "trades")), dict(evals=()), dict(pgd_steps=0),
                                 dict(curve_subset=0), dict(eps_grid=(-0.1,)), dict(p=1)])
def test_inp01_bad_matrix_config(bad):
    with pytest.raises((ValueError, TypeError)):
        MatrixConfig(**bad)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_recipe_in_configs_is_valid(recipe):
    data = load_toml(recipe)
    assert set(data) <= {"train", "matrix"} or "train" not in data
    train = TrainConfig.from_dict(data.get("train", data))
    if "matrix" in data:
        mc = MatrixConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["matrix"].items()})
        assert mc.eps > 0 and train.dataset
