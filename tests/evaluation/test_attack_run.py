"""DATA-08/09 and issue 8 (findings 3, 5, 6): an attack result is one committed unit, named by its whole
configuration, reused only when it matches exactly, and written under the run's lock."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from trustlab.errors import RunInUseError
from trustlab.evaluation import attack_run
from trustlab.runs.folder import run_lock
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, train_run

PGD = {"steps": 3}
attack_module = importlib.import_module("trustlab.evaluation.attack_run")  # the package exports the function
record_set_module = importlib.import_module("trustlab.evaluation.record_set")  # where results are written


class _Killed(BaseException):
    """Stands for a SIGKILL in the middle of writing a result."""


@pytest.fixture()
def run(tmp_path) -> Path:
    out = tmp_path / "run"
    train_run(TrainConfig(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50), out, progress=False)
    return out


def _results(run: Path) -> list[Path]:
    """The committed evaluations (hidden folders are a killed evaluation's journal, kept for its resumption)."""
    return sorted(p for p in (run / "attacks").iterdir() if not p.name.startswith("."))


def test_data09_results_differing_in_seed_or_subset_do_not_replace_each_other(run):
    first = attack_run(run, "pgd", LpBall(0.1), PGD, subset=20, progress=False)
    attack_run(run, "pgd", LpBall(0.1), PGD, seed=5, progress=False)
    folders = _results(run)
    assert len(folders) == 2 and all(f.name.startswith("pgd-linf-eps0.1-steps3-") for f in folders)
    kept = [json.loads((f / "summary.json").read_text()) for f in folders]
    assert first in kept and sorted(s["n"] for s in kept) == [20, 100]


def test_data08_killed_write_leaves_no_half_result_and_reuse_needs_an_exact_match(run, monkeypatch):
    partial = attack_run(run, "pgd", LpBall(0.1), PGD, subset=20, progress=False)
    before = {f.name: sorted(p.name for p in f.iterdir()) for f in _results(run)}

    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(record_set_module, "write_records", killed)
    with pytest.raises(_Killed):
        attack_run(run, "pgd", LpBall(0.1), PGD, progress=False)
    assert {f.name: sorted(p.name for p in f.iterdir()) for f in _results(run)} == before
    assert not list((run / "attacks").glob(".*.tmp"))  # the half-written result is gone; the journal may stay
    monkeypatch.undo()
    full = attack_run(run, "pgd", LpBall(0.1), PGD, reuse=True, progress=False)
    assert full["n"] == 100 and partial["n"] == 20
    assert attack_run(run, "pgd", LpBall(0.1), PGD, reuse=True, progress=False) == full
    cfg = json.loads((_results(run)[0] / "config.json").read_text())
    assert cfg["checkpoint"]["name"] == "epoch_0001" and len(cfg["checkpoint"]["sha256"]) == 64


def test_data09_attack_refuses_a_run_another_process_writes(run):
    with run_lock(run):
        with pytest.raises(RunInUseError, match="is in use by PID"):
            attack_run(run, "fgsm", LpBall(0.1), {}, progress=False)
    assert not (run / "attacks").exists()


def test_data09_matrix_refuses_a_folder_another_matrix_writes(tmp_path):
    from trustlab.evaluation.matrix import MatrixConfig, run_matrix

    base = TrainConfig(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50)
    mc = MatrixConfig(eps=0.1, train=("none",), evals=("clean", "fgsm"), eps_grid=())
    tmp_path.joinpath("m").mkdir()
    with run_lock(tmp_path / "m"):
        with pytest.raises(RunInUseError, match="is in use by PID"):
            run_matrix(base, mc, tmp_path / "m", progress=False)
    assert [p.name for p in (tmp_path / "m").iterdir()] == [".trustlab.lock"]


def test_eval_results_of_another_checkpoint_are_left_out_of_reports_and_matrix(run, tmp_path):
    from trustlab.reports.metrics import robustness_matrix
    from trustlab.reports.report import build_report
    from trustlab.reports.runs import load_run

    attack_run(run, "pgd", LpBall(0.1), PGD, progress=False)  # on epoch 1
    train_run(TrainConfig(dataset="digits", model="mlp", epochs=2, subset=100, batch_size=50), run, resume=True,
              force_resume=True, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint"]["name"] == "epoch_0002" and len(summary["checkpoint"]["sha256"]) == 64
    view = load_run(run)
    assert view.attacks == ()
    (message,) = view.left_out
    assert "was computed on checkpoint epoch_0001" in message and "not on epoch_0002" in message
    assert [r.get("pgd") for r in robustness_matrix([view], ("clean", "pgd"), eps=0.1)] == [None]
    report = json.loads((build_report([run], tmp_path / "report").parent / "report.json").read_text())
    assert report["left_out"] == [message]
    attack_run(run, "pgd", LpBall(0.1), PGD, reuse=True, progress=False)  # recomputed on epoch 2, not reused
    assert len(load_run(run).attacks) == 1 and load_run(run).left_out == ()


def test_eval10_attack_writes_the_model_checks_and_the_report_shows_their_flags_without_a_model(run, tmp_path):
    from torch import nn

    from trustlab.attacks import build_attack
    from trustlab.reports.report import build_report
    from trustlab.reports.runs import load_run

    attack_run(run, "pgd", LpBall(0.1), PGD, subset=30, progress=False)
    (folder,) = _results(run)
    checks = json.loads((folder / "checks.json").read_text())
    assert checks["n"] == 30 and checks["flags"] == [] and "zero_gradients" in checks["checks"]
    report = tmp_path / "report"
    build_report([run], report)
    assert json.loads((report / "report.json").read_text())["flags"] == []
    assert "Checks run on the model at attack time" in (report / "report.md").read_text()
    # the same evaluation of a softmax-output model: its checks.json carries the flag into the report
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    soft = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1)).eval()
    written = attack_module.model_checks(soft, x, y, build_attack("pgd", LpBall(0.1), **PGD), run=run.name)
    assert [f["code"] for f in written["flags"]] == ["probabilities"] and written["n"] == 20
    (folder / "checks.json").write_text(json.dumps(written))
    (flag,) = json.loads((build_report([run], tmp_path / "report2").parent / "report.json").read_text())["flags"]
    assert flag["code"] == "probabilities" and flag["run"] == load_run(run).name
    assert flag["evidence"]["attacks"] == [folder.name] and "pass logits" in flag["message"]


def _ensemble_members(threat: LpBall) -> tuple:
    """Cheap members that each break something on the tiny run at eps 0.3: a weak one-step PGD, FGSM, PGD-5."""
    from trustlab.attacks import FGSM, PGD

    return (PGD(threat, steps=1, step_size=threat.eps / 8, random_start=False), FGSM(threat), PGD(threat, steps=5))


def test_ensemble_records_name_the_member_that_broke_each_example_and_the_summary_counts_per_member(run):
    threat = LpBall(0.3)
    members = _ensemble_members(threat)
    summary = attack_run(run, "ensemble", threat, {"version": "custom", "members": members}, batch_size=40,
                         progress=False)
    (folder,) = _results(run)
    assert folder.name.startswith("ensemble-linf-eps0.3-members3-versioncustom-")  # the members are in the hash
    assert json.loads((folder / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    broken = [r for r in records if r["correct"] and not r["robust"]]
    assert broken and all(r["broken_by"] is not None for r in broken)
    assert all(r["broken_by"] is None for r in records if r["robust"] or not r["correct"])
    stats = summary["members"]
    assert [m["name"] for m in stats] == ["pgd#1", "fgsm", "pgd#3"]
    assert [m["attack"] for m in stats] == [a.to_dict() for a in members]
    assert sum(m["broken"] for m in stats) == len(broken)
    assert [m["broken"] for m in stats] == [sum(r["broken_by"] == m["name"] for r in records) for m in stats]
    # each member runs on exactly the points the ones before it left robust
    attacked = [m["attacked"] for m in stats]
    assert attacked[0] == sum(r["correct"] for r in records)
    assert attacked[1:] == [a - m["broken"] for a, m in zip(attacked, stats[:-1])]
    assert attacked == sorted(attacked, reverse=True) and all(m["seconds"] >= 0 for m in stats)
    assert len({r["broken_by"] for r in broken}) >= 2  # more than one member breaks something, else this shows little
    # other attacks' records and summaries are as before
    pgd_summary = attack_run(run, "pgd", threat, PGD, progress=False)
    pgd_folder = next(f for f in _results(run) if f.name.startswith("pgd-"))
    assert "members" not in pgd_summary
    assert "broken_by" not in json.loads((pgd_folder / "records.jsonl").read_text().splitlines()[0])


def test_ensemble_evaluation_gives_the_records_and_x_adv_of_the_plain_attack_path(small_model, test_batch):
    """Same batches, same generator stream: evaluate_ensemble only adds broken_by to evaluate_attack's records."""
    from trustlab.attacks import Ensemble

    x, y = test_batch
    x, y = x[:70], y[:70]
    attack = Ensemble(LpBall(0.1), version="custom", members=_ensemble_members(LpBall(0.1)))
    rows, x_adv = attack_module.evaluate_attack(small_model, x, y, attack, batch_size=30, seed=3)
    rows_e, x_adv_e, stats = attack_module.evaluate_ensemble(small_model, x, y, attack, batch_size=30, seed=3)
    assert torch.equal(x_adv, x_adv_e)
    assert [{k: v for k, v in r.items() if k != "broken_by"} for r in rows_e] == rows
    assert sum(m["broken"] for m in stats) == sum(r["broken_by"] is not None for r in rows_e) > 0


def test_member_names_follow_autoattack_and_stay_unique():
    from trustlab.attacks import Ensemble

    def names(version: str) -> list[str]:
        return attack_module.member_names(Ensemble(LpBall(0.3), version=version).to_dict()["members"])

    assert names("standard") == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert names("rand") == ["eot-apgd-ce", "eot-apgd-dlr"]
    assert attack_module.member_names([{"attack": "fgsm"}, {"attack": "pgd"}, {"attack": "fgsm"}]) == [
        "fgsm#1", "pgd", "fgsm#3"]


def test_report_shows_an_ensembles_member_table_from_its_summary_without_a_model(run, tmp_path):
    from trustlab.reports.report import build_report

    threat = LpBall(0.3)
    summary = attack_run(run, "ensemble", threat, {"version": "custom", "members": _ensemble_members(threat)},
                         progress=False)
    attack_run(run, "pgd", threat, PGD, progress=False)
    (folder,) = [f for f in _results(run) if f.name.startswith("ensemble-")]
    report = tmp_path / "report"
    build_report([run], report)
    (entry,) = json.loads((report / "report.json").read_text())["runs"]
    assert entry["ensemble_members"] == {folder.name: [
        {"member": m["name"], "attacked": m["attacked"], "broken": m["broken"], "seconds": m["seconds"]}
        for m in summary["members"]]}
    md = (report / "report.md").read_text()
    assert f"Ensemble {folder.name}: its members in the order they ran" in md
    assert "| member | attacked | broken | seconds |" in md
    for m in summary["members"]:
        name = m["name"].replace("#", "\\#")  # as Markdown escapes it
        assert f"| {name} | {m['attacked']} | {m['broken']} | " in md
