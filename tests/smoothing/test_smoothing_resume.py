"""DATA-08 (reliability-tests.md Sec. 4) for ``trustlab smooth``: a smoothing evaluation killed after two of its
four groups resumes from its journal in ``RUN/smoothing/.<id>.partial/`` and commits the records and summary an
uninterrupted run commits (their times aside), without smoothing the journaled groups again; a journal written
for another configuration or group size is discarded, never mixed in."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from trustlab.evaluation.journal import partial_folder
from trustlab.evaluation.smoothing_run import smoothing_config, smoothing_id, smoothing_run
from trustlab.runs import read_records
from trustlab.smoothing import SmoothedClassifier
from trustlab.training import TrainConfig, train_run

smoothing_module = sys.modules["trustlab.evaluation.smoothing_run"]

GROUP, SUBSET = 10, 40  # four groups of ten examples
MODES = {"certify": dict(sigma=0.25, n0=10, n=40, alpha=0.01), "predict": dict(sigma=0.25, n=30, alpha=0.01)}
TIMES = ("seconds", "seconds_per_example")


class Killed(BaseException):
    """Stands in for SIGKILL in the middle of a group (BaseException: nothing may catch it)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("smooth-resume") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp-1x50", epochs=2, subset=400, batch_size=50), run,
              progress=False)
    return run


@pytest.fixture()
def small_groups(monkeypatch):
    monkeypatch.setattr(smoothing_module, "EXAMPLES_PER_GROUP", GROUP)


def _copy(run, tmp_path, name):
    return shutil.copytree(run, tmp_path / name, ignore=shutil.ignore_patterns("smoothing"))


def _folder(run, mode, **kw):
    return run / "smoothing" / smoothing_id(smoothing_config(mode, subset=SUBSET, **{**MODES[mode], **kw}))


def _result(run, mode, **kw):
    """The committed records and summary, times stripped."""
    folder = _folder(run, mode, **kw)
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(folder / "records.jsonl")]
    summary = json.loads((folder / "summary.json").read_text())
    return records, {k: v for k, v in summary.items() if k not in TIMES}


def _killed_after(run, mode, groups, monkeypatch, **kw):
    """Run ``mode`` on ``run`` and kill it while it smooths group ``groups`` (0-based); returns its journal."""
    real, calls = getattr(SmoothedClassifier, mode), {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == groups + 1:
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SmoothedClassifier, mode, dies)
    with pytest.raises(Killed):
        smoothing_run(run, mode, subset=SUBSET, device="cpu", **{**MODES[mode], **kw})
    monkeypatch.setattr(SmoothedClassifier, mode, real)
    journal = partial_folder(_folder(run, mode, **kw))
    assert not _folder(run, mode, **kw).exists()  # nothing committed
    assert len(json.loads((journal / "journal.json").read_text())["batches"]) == groups
    return journal


def _count_groups(monkeypatch, mode):
    real, calls = getattr(SmoothedClassifier, mode), {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SmoothedClassifier, mode, counted)
    return calls


@pytest.mark.parametrize("mode", sorted(MODES))
def test_data08_killed_smoothing_resumes_to_the_records_of_an_uninterrupted_run(trained, tmp_path, monkeypatch,
                                                                                small_groups, mode):
    whole, killed = _copy(trained, tmp_path, "whole"), _copy(trained, tmp_path, "killed")
    reference = smoothing_run(whole, mode, subset=SUBSET, device="cpu", **MODES[mode])
    assert "resumed_groups" not in reference

    journal = _killed_after(killed, mode, 2, monkeypatch)
    calls = _count_groups(monkeypatch, mode)
    resumed = smoothing_run(killed, mode, subset=SUBSET, device="cpu", **MODES[mode])
    assert calls["n"] == 2  # only the two groups the journal lacks are smoothed
    assert resumed["resumed_groups"] == 2
    records, summary = _result(killed, mode)
    assert [r["idx"] for r in records] == list(range(SUBSET))
    assert (records, summary) == (_result(whole, mode)[0], {**_result(whole, mode)[1], "resumed_groups": 2})
    assert not journal.exists()  # the journal goes once the record set is committed
    assert sorted(p.name for p in (killed / "smoothing").iterdir()) == [_folder(killed, mode).name]


def test_data08_a_journal_of_another_configuration_is_discarded(trained, tmp_path, monkeypatch, small_groups):
    whole, killed = _copy(trained, tmp_path, "whole"), _copy(trained, tmp_path, "killed")
    smoothing_run(whole, "certify", subset=SUBSET, device="cpu", **MODES["certify"])
    # another seed has another id, so another journal folder; planted where seed 0's belongs, it is not resumed
    other = _killed_after(killed, "certify", 2, monkeypatch, seed=1)
    assert other != partial_folder(_folder(killed, "certify"))
    other.rename(partial_folder(_folder(killed, "certify")))
    calls = _count_groups(monkeypatch, "certify")
    summary = smoothing_run(killed, "certify", subset=SUBSET, device="cpu", **MODES["certify"])
    assert calls["n"] == SUBSET // GROUP and "resumed_groups" not in summary
    assert _result(killed, "certify") == _result(whole, "certify")
    assert not partial_folder(_folder(killed, "certify")).exists()


def test_data08_a_journal_of_another_group_size_is_discarded(trained, tmp_path, monkeypatch, small_groups):
    whole, killed = _copy(trained, tmp_path, "whole"), _copy(trained, tmp_path, "killed")
    journal = _killed_after(killed, "predict", 2, monkeypatch)  # two groups of ten
    monkeypatch.setattr(smoothing_module, "EXAMPLES_PER_GROUP", 2 * GROUP)  # same id: the size is not in it
    smoothing_run(whole, "predict", subset=SUBSET, device="cpu", **MODES["predict"])
    summary = smoothing_run(killed, "predict", subset=SUBSET, device="cpu", **MODES["predict"])
    assert "resumed_groups" not in summary
    assert _result(killed, "predict") == _result(whole, "predict")
    assert not journal.exists()
