"""A killed evaluation resumes from its journal with the records an uninterrupted one gives (RUN-safety for long
evaluations): PGD and a small custom ensemble, interrupted after two of four batches."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from trustlab.attacks import APGD, FABT, Ensemble, Square
from trustlab.evaluation import attack_run
from trustlab.evaluation.journal import BatchJournal, partial_folder
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, train_run

attack_run_module = sys.modules["trustlab.evaluation.attack_run"]  # the package's name attack_run is the function

EPS = LpBall(0.1)
SUBSET, BATCH = 120, 30  # four batches


class Killed(BaseException):
    """Stands in for SIGKILL after a chosen batch (BaseException: nothing may catch it)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp", epochs=2, batch_size=50), run, progress=False)
    return run


def _copy(run, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("attacks"))
    return dst


def _records(run):
    (folder,) = [p for p in (run / "attacks").iterdir() if not p.name.startswith(".")]
    return [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()], folder


CASES = {
    "pgd": ("pgd", {"steps": 5, "restarts": 2}, "attack_batched"),
    "ensemble": ("ensemble", {"version": "custom", "members": (APGD(EPS, steps=5), FABT(EPS, steps=3, n_target_classes=2),
                                                                Square(EPS, queries=30))}, "ensemble_with_log"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_run08_killed_evaluation_resumes_to_the_same_records(trained, tmp_path, monkeypatch, case):
    name, params, step = CASES[case]
    whole, killed = _copy(trained, tmp_path, "whole"), _copy(trained, tmp_path, "killed")
    kw = dict(subset=SUBSET, batch_size=BATCH, progress=False)
    reference = attack_run(whole, name, EPS, params, **kw)
    assert "resumed_batches" not in reference

    calls = {"n": 0}
    real = getattr(attack_run_module, step)

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(attack_run_module, step, dies_on_third)
    with pytest.raises(Killed):
        attack_run(killed, name, EPS, params, **kw)
    monkeypatch.setattr(attack_run_module, step, real)
    assert not [p for p in (killed / "attacks").iterdir() if not p.name.startswith(".")]  # nothing committed
    (journal,) = [p for p in (killed / "attacks").iterdir() if p.name.endswith(".partial")]
    assert json.loads((journal / "journal.json").read_text())["batches"].__len__() == 2

    resumed = attack_run(killed, name, EPS, params, **kw)
    assert resumed["resumed_batches"] == 2
    (rows_a, folder_a), (rows_b, folder_b) = _records(whole), _records(killed)
    assert rows_a == rows_b  # bitwise the same x_adv: the same predictions, distances and confidences
    assert resumed["robust_acc"] == reference["robust_acc"]
    if name == "ensemble":
        strip = [{k: v for k, v in m.items() if k != "seconds"} for m in reference["members"]]
        assert strip == [{k: v for k, v in m.items() if k != "seconds"} for m in resumed["members"]]
    assert not partial_folder(folder_b).exists()  # the journal goes once the result is committed


def test_a_journal_of_another_checkpoint_is_discarded(tmp_path):
    folder = tmp_path / ".x.partial"
    old = BatchJournal(folder, {"a": (1, 2)}, {"sha256": "old"})
    gen = torch.Generator().manual_seed(0)
    old.append({"x_adv": torch.zeros(2, 3)}, gen, seconds=1.0)
    assert len(BatchJournal(folder, {"a": [1, 2]}, {"sha256": "old"}).resume(torch.Generator())) == 1
    assert BatchJournal(folder, {"a": (1, 2)}, {"sha256": "new"}).resume(torch.Generator()) == []
    assert not folder.exists()
