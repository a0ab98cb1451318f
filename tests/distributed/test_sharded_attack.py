"""``trustlab attack`` under 2-process ``torchrun`` (gloo, CPU) writes the records one process writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchrun_helpers import cli, run, torchrun

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "200", "--batch-size", "50",
         "--device", "cpu"]
# 90 examples in batches of 20: 5 batches, so rank 0 attacks 3 and rank 1 attacks 2 (the last one short)
ATTACK = ["attack", "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--restarts", "2", "--batch-size", "20",
          "--subset", "90", "--device", "cpu", "--seed", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("attack") / "run"
    run(cli(*TRAIN, "--out", str(folder)))
    return folder


def test_sharded_records_equal_one_process(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    run(cli(*ATTACK, str(trained)))
    done = run(torchrun(*ATTACK, str(copy)))
    assert done.stdout.count("robust") == 1  # only rank 0 prints
    (one,) = (trained / "attacks").iterdir()
    (two,) = (copy / "attacks").iterdir()
    assert one.name == two.name
    for name in ("records.jsonl", "examples.safetensors", "checks.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    s1, s2 = (json.loads((f / "summary.json").read_text()) for f in (one, two))
    assert {k: v for k, v in s1.items() if k != "seconds"} == {k: v for k, v in s2.items() if k != "seconds"}
    assert json.loads((two / "config.json").read_text())["runtime"]["processes"] == 2
    assert sorted(p.name for p in (copy / "attacks").iterdir()) == [two.name]  # no journal or temp folder left
