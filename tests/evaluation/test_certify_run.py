"""Certificate record sets: RUN/certificates/<id>/ committed as one unit under the run's lock, named by the whole
configuration, on the same test prefix as attack evaluations (DATA-08/09 for certificates, EVAL-14 inputs)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trustlab.certify import LP, AlphaCROWN
from trustlab.errors import RunInUseError
from trustlab.evaluation import attack_run, certificate_id, certify_run
from trustlab.evaluation.certify_run import certificate_rows
from trustlab.runs import read_records
from trustlab.runs.folder import run_lock
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, train_run

record_set_module = importlib.import_module("trustlab.evaluation.record_set")
certify_module = importlib.import_module("trustlab.evaluation.certify_run")


class _Killed(BaseException):
    """Stands for a SIGKILL in the middle of writing a result."""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certify") / "run"
    config = TrainConfig(dataset="digits", model="mlp", epochs=4, subset=600, batch_size=50, lr=0.002)
    train_run(config, out, progress=False)
    return out


def test_certificates_are_written_with_settings_checkpoint_and_one_row_per_example(run):
    threat = LpBall(0.02)
    summary = certify_run(run, "crown", threat, subset=30)
    folder = run / "certificates" / certificate_id("crown", threat, subset=30)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "records.jsonl", "summary.json"] or names == [
        "config.json", "counterexamples.safetensors", "records.jsonl", "summary.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["method"] == {"method": "crown"} and config["threat"]["eps"] == 0.02 and config["subset"] == 30
    assert config["checkpoint"]["name"] == "epoch_0004" and len(config["checkpoint"]["sha256"]) == 64
    rows = read_records(folder / "records.jsonl")
    assert [r["idx"] for r in rows] == list(range(30)) and summary["n"] == 30
    assert all(set(r) >= {"idx", "y", "pred", "correct", "verdict", "certified", "min_margin_lower",
                          "margin_lower", "seconds"} for r in rows)
    assert all(r["correct"] for r in rows if r["certified"]) and 0 < summary["certified_acc"] <= summary["clean_acc"]
    assert all((r["verdict"] == "certified") == r["certified"] for r in rows)
    assert all(len(r["margin_lower"]) == 9 for r in rows)
    falsified = [r["idx"] for r in rows if r["verdict"] == "falsified"]
    assert summary["falsified"] == len(falsified) and summary["certified"] + summary["unknown"] + len(falsified) == 30
    if falsified:  # the misclassified clean inputs are their own counterexamples
        found = load_file(folder / "counterexamples.safetensors")
        assert found["idx"].tolist() == falsified and torch.equal(found["clean"], found["counterexample"])


def test_certified_examples_survive_pgd_on_the_same_prefix(run):
    """EVAL-14 on a real model: certificates and PGD records of one run match by idx, and agree."""
    threat = LpBall(0.02)
    certify_run(run, "crown", threat, subset=40)
    attack_run(run, "pgd", threat, {"steps": 20}, subset=40, progress=False)
    certified = {r["idx"] for r in read_records(run / "certificates" / certificate_id("crown", threat, subset=40)
                                                / "records.jsonl") if r["certified"]}
    (pgd,) = [d for d in (run / "attacks").iterdir() if d.name.startswith("pgd-linf-eps0.02-steps20-")]
    broken = {r["idx"] for r in read_records(pgd / "records.jsonl") if not r["robust"]}
    assert certified and not certified & broken


def test_ids_follow_the_configuration_and_reuse_needs_an_exact_match(run):
    a = certificate_id("alpha-crown", LpBall(0.02), subset=10)
    assert a.startswith("alpha-crown-linf-eps0.02-n10-")
    assert a != certificate_id(AlphaCROWN(steps=5), LpBall(0.02), subset=10)  # settings are in the hash
    assert a != certificate_id("alpha-crown", LpBall(0.02, p=2), subset=10)
    assert a != certificate_id("alpha-crown", LpBall(0.02), subset=11)
    first = certify_run(run, AlphaCROWN(steps=3), LpBall(0.02), subset=10)
    assert certify_run(run, AlphaCROWN(steps=3), LpBall(0.02), subset=10, reuse=True) == first


def test_a_killed_write_leaves_no_half_certificate(run, monkeypatch):
    def killed(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(record_set_module, "write_records", killed)
    with pytest.raises(_Killed):
        certify_run(run, "ibp", LpBall(0.03), subset=12)
    names = [p.name for p in (run / "certificates").iterdir()]
    assert not any(n.startswith("ibp-linf-eps0.03-n12-") for n in names)
    # only the journal of the finished chunks is left, to resume from (no half-written record set)
    assert [n for n in names if n.startswith(".")] == [f".{certificate_id('ibp', LpBall(0.03), subset=12)}.partial"]


def test_a_killed_certification_resumes_from_its_journal_with_the_same_records(run, monkeypatch):
    """DATA-04 for certificates: a solver method journals every few examples; a kill after the first chunk loses nothing
    and the rerun certifies only the rest, with records equal to an uninterrupted run's (times aside)."""
    threat = LpBall(0.02)
    method = LP(intermediate="interval")
    whole = certify_run(run, method, threat, subset=9)
    folder = run / "certificates" / certificate_id(method, threat, subset=9)
    want = read_records(folder / "records.jsonl")
    shutil.rmtree(folder)
    calls = {"n": 0}
    real = certify_module.certify

    def dies_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(certify_module, "certify", dies_on_second_chunk)
    with pytest.raises(_Killed):
        certify_run(run, method, threat, subset=9)
    monkeypatch.setattr(certify_module, "certify", real)
    again = certify_run(run, method, threat, subset=9)
    got = read_records(folder / "records.jsonl")
    assert again["resumed_batches"] == 1 and again["n"] == whole["n"] == 9
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "solver")} for r in rows]  # noqa: E731
    assert drop(got) == drop(want)
    assert [r["solver"]["status"] for r in got] == [r["solver"]["status"] for r in want]
    assert not (folder.parent / f".{folder.name}.partial").exists()


def test_certify_refuses_a_run_another_process_writes_and_bad_arguments(run, tmp_path):
    with run_lock(run):
        with pytest.raises(RunInUseError, match="is in use by PID"):
            certify_run(run, "ibp", LpBall(0.1), subset=5)
    with pytest.raises(ValueError, match=r"unknown certification method 'ibq'; choose one of \['alpha-crown', "):
        certify_run(run, "ibq", LpBall(0.1))
    with pytest.raises(ValueError, match="subset must be an int >= 1, got 0"):
        certify_run(run, "ibp", LpBall(0.1), subset=0)
    with pytest.raises(FileNotFoundError, match="not a trustlab run folder"):
        certify_run(tmp_path, "ibp", LpBall(0.1))
    with pytest.raises(ValueError, match=r"pred must have one entry per certificate \(0\), got 1"):
        certificate_rows([], [3])
