"""``trustlab verify`` under 2-process ``torchrun`` (gloo, CPU) commits the certificate records one process commits,
times aside; rank 0 resumes a journal a one-process run left."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from torchrun_helpers import cli, run, torchrun
from trustlab.evaluation import certify_run
from trustlab.runs import read_records
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, train_run

certify_module = importlib.import_module("trustlab.evaluation.certify_run")

# 10 examples in chunks of 4 (the bound methods' --batch-size, the MILP's SOLVER_CHUNK): 3 chunks, so rank 0
# certifies 2 and rank 1 one, the short last one. The MILP's PGD-first attack (a seeded generator) falsifies some.
VERIFY = ["verify", "--method", "ibp,crown,milp", "--eps", "0.05", "--n-examples", "10", "--batch-size", "4",
          "--pgd-steps", "3", "--device", "cpu"]
TIMES = ("seconds", "seconds_per_example", "seconds_median", "seconds_max")  # wall times: differ run to run
RESUMED = "resumed_batches"  # in a resumed run's summary only


class _Killed(BaseException):
    """Stands for a SIGKILL after the first chunk."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("verify") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp-1x50", epochs=2, subset=400, batch_size=50), folder,
              progress=False)
    return folder


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k != "seconds"}
    if "solver" in out:
        out["solver"] = {k: v for k, v in out["solver"].items() if k != "seconds"}
    return out


def _assert_same_certificates(one: Path, two: Path) -> None:
    """The same record sets in two run folders: records and summaries equal but for times, counterexamples
    byte-identical, and no journal or temp folder left."""
    names = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == names and not [n for n in names if n.startswith(".")]
    for name in names:
        a, b = one / name, two / name
        assert [_untimed(r) for r in read_records(a / "records.jsonl")] == \
            [_untimed(r) for r in read_records(b / "records.jsonl")], name
        s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (a, b))
        skip = (*TIMES, RESUMED)
        assert {k: v for k, v in s1.items() if k not in skip} == {k: v for k, v in s2.items() if k not in skip}
        assert RESUMED not in s1
        assert (a / "counterexamples.safetensors").exists() == (b / "counterexamples.safetensors").exists()
        if (a / "counterexamples.safetensors").exists():
            assert (a / "counterexamples.safetensors").read_bytes() == (b / "counterexamples.safetensors").read_bytes()


@pytest.mark.slow  # about 18 s: one verify on 1 process and one on 2
def test_sharded_certificates_equal_one_process(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    run(cli(*VERIFY, str(trained)))
    done = run(torchrun(*VERIFY, str(copy)))
    assert done.stdout.count("| milp ") == 1  # only rank 0 prints
    _assert_same_certificates(trained / "certificates", copy / "certificates")
    folders = sorted((copy / "certificates").iterdir())
    assert [d.name.split("-")[0] for d in folders] == ["crown", "ibp", "milp"]
    for d in folders:
        assert [r["idx"] for r in read_records(d / "records.jsonl")] == list(range(10))
        assert json.loads((d / "config.json").read_text())["runtime"]["processes"] == 2
    milp = read_records(folders[2] / "records.jsonl")
    assert any("attack" in r["solver"]["status"] for r in milp), "no example exercised the MILP's PGD attack"
    (pgd,) = (copy / "attacks").iterdir()  # PGD's comparison is sharded too, byte for byte
    assert (pgd / "records.jsonl").read_bytes() == (trained / "attacks" / pgd.name / "records.jsonl").read_bytes()


@pytest.mark.slow  # about 16 s
def test_two_processes_resume_the_journal_of_a_killed_one(trained, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(trained, whole)
    shutil.copytree(trained, killed)
    for folder in (whole, killed):
        shutil.rmtree(folder / "certificates", ignore_errors=True)
        shutil.rmtree(folder / "attacks", ignore_errors=True)
    args = ["verify", "--method", "milp", *VERIFY[3:]]
    run(cli(*args, str(whole)))
    real, calls = certify_module.certify, {"n": 0}

    def dies_on_second_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed
        return real(*a, **k)

    monkeypatch.setattr(certify_module, "certify", dies_on_second_chunk)
    with pytest.raises(_Killed):
        certify_run(killed, "milp", LpBall(0.05), subset=10, batch_size=4, device="cpu")
    (journal,) = (killed / "certificates").iterdir()
    assert journal.name.startswith(".milp-") and journal.name.endswith(".partial")
    run(torchrun(*args, str(killed)))
    _assert_same_certificates(whole / "certificates", killed / "certificates")
    (folder,) = (killed / "certificates").iterdir()
    assert json.loads((folder / "summary.json").read_text())["resumed_batches"] == 1
