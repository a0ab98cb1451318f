"""``trustlab smooth certify|predict`` under ``torchrun`` (gloo, CPU) commits the records one process commits,
their times aside: each group of examples draws from a generator keyed by the group, never by the rank."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchrun_helpers import cli, run, torchrun
from trustlab.evaluation.smoothing_run import EXAMPLES_PER_GROUP, smoothing_run
from trustlab.runs import read_records
from trustlab.smoothing import SmoothedClassifier
from trustlab.training import TrainConfig, train_run

N_EXAMPLES = 250  # groups of 100, 100 and 50: rank 0 smooths two, rank 1 one (the short last one)
COMMON = ["--sigma", "0.25", "--alpha", "0.01", "--n-examples", str(N_EXAMPLES), "--batch-size", "300",
          "--device", "cpu", "--seed", "3"]
CERTIFY = ["smooth", "certify", "--n0", "10", "--n-samples", "40", *COMMON]
PREDICT = ["smooth", "predict", "--n-samples", "30", *COMMON]
TIMES = ("seconds", "seconds_per_example")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("smooth") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp-1x50", epochs=2, subset=400, batch_size=50), folder,
              progress=False)
    return folder


def _copy(trained: Path, to: Path) -> Path:
    shutil.copytree(trained, to)
    return to


def _compare(one: Path, two: Path, *, processes: int) -> None:
    """The smoothing record sets of two run folders: same folders, records and summaries equal but for times,
    configs equal but for the run folder and the number of processes."""
    names = sorted(p.name for p in (one / "smoothing").iterdir())
    assert sorted(p.name for p in (two / "smoothing").iterdir()) == names and names
    for name in names:
        a, b = one / "smoothing" / name, two / "smoothing" / name
        ra, rb = read_records(a / "records.jsonl"), read_records(b / "records.jsonl")
        assert [r["idx"] for r in rb] == list(range(N_EXAMPLES))
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in ra] == \
            [{k: v for k, v in r.items() if k != "seconds"} for r in rb], name
        s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (a, b))
        assert {k: v for k, v in s1.items() if k not in TIMES} == {k: v for k, v in s2.items() if k not in TIMES}
        c1, c2 = (json.loads((f / "config.json").read_text()) for f in (a, b))
        runtime = c2.pop("runtime")
        assert runtime.get("processes") == (processes if processes > 1 else None)
        assert {k: v for k, v in c1.items() if k not in ("run", "runtime")} == \
            {k: v for k, v in c2.items() if k != "run"}


@pytest.mark.slow  # about 30 s: certify and predict on 1 process and on 2
def test_sharded_smoothing_records_equal_one_process(trained, tmp_path):
    assert -(-N_EXAMPLES // EXAMPLES_PER_GROUP) % 2 == 1  # a group count the 2 ranks do not divide
    copy = _copy(trained, tmp_path / "copy")
    for args in (CERTIFY, PREDICT):
        run(cli(*args[:2], str(trained), *args[2:]))
        done = run(torchrun(*args[:2], str(copy), *args[2:]))
        assert done.stdout.count("| sigma") == 1  # only rank 0 prints
    _compare(trained, copy, processes=2)
    assert sorted(p.name.split("-")[0] for p in (copy / "smoothing").iterdir()) == ["certify", "predict"]
    certified = read_records(next((copy / "smoothing").glob("certify-*")) / "records.jsonl")
    assert 0 < sum(not r["abstain"] for r in certified) < N_EXAMPLES  # the noise decides: not all one way


@pytest.mark.slow  # about 15 s
def test_one_process_under_torchrun_is_the_single_process_run(trained, tmp_path):
    one, under = _copy(trained, tmp_path / "one"), _copy(trained, tmp_path / "under")
    shutil.rmtree(one / "smoothing", ignore_errors=True)
    shutil.rmtree(under / "smoothing", ignore_errors=True)
    run(cli(*CERTIFY[:2], str(one), *CERTIFY[2:]))
    run(torchrun(*CERTIFY[:2], str(under), *CERTIFY[2:], nproc=1))
    _compare(one, under, processes=1)


class _Killed(BaseException):
    """Stands in for SIGKILL in the middle of a group (BaseException: nothing may catch it)."""


@pytest.mark.slow  # about 20 s
def test_two_processes_resume_the_smoothing_journal_of_a_killed_one(trained, tmp_path, monkeypatch):
    whole, killed = _copy(trained, tmp_path / "whole"), _copy(trained, tmp_path / "killed")
    for folder in (whole, killed):
        shutil.rmtree(folder / "smoothing", ignore_errors=True)
    run(cli(*CERTIFY[:2], str(whole), *CERTIFY[2:]))
    real, calls = SmoothedClassifier.certify, {"n": 0}

    def dies_in_second_group(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed
        return real(self, *a, **k)

    monkeypatch.setattr(SmoothedClassifier, "certify", dies_in_second_group)
    with pytest.raises(_Killed):
        smoothing_run(killed, "certify", sigma=0.25, n0=10, n=40, alpha=0.01, subset=N_EXAMPLES, batch_size=300,
                      seed=3, device="cpu")
    (journal,) = (killed / "smoothing").iterdir()
    assert journal.name.startswith(".certify-") and journal.name.endswith(".partial")
    run(torchrun(*CERTIFY[:2], str(killed), *CERTIFY[2:]))  # groups 1 and 2, one on each rank
    (a,), (b,) = (whole / "smoothing").iterdir(), (killed / "smoothing").iterdir()
    assert a.name == b.name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_records(b / "records.jsonl")) == strip(read_records(a / "records.jsonl"))
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert s2.pop("resumed_groups") == 1
    assert {k: v for k, v in s1.items() if k not in TIMES} == {k: v for k, v in s2.items() if k not in TIMES}
