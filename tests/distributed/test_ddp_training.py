"""A 2-process ``torchrun`` training run (gloo, CPU) takes the steps of one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from torchrun_helpers import cli, run, torchrun
from trustlab.checkpoint import latest_checkpoint

# 203 training examples in batches of 64: the last batch (11) splits 6/5, so the loss weights matter
BASE = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--subset", "203", "--batch-size", "64",
        "--device", "cpu", "--seed", "1"]
DEFENSES = {"none": [], "pgd": ["--defense", "pgd", "--eps", "0.1", "--pgd-steps", "3"]}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(folder) / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, f"weights of {a.name} and {b.name} differ by {worst}"


@pytest.mark.parametrize("defense", list(DEFENSES))
def test_two_processes_match_one(tmp_path, defense):
    args = BASE + DEFENSES[defense]
    run(cli(*args, "--out", str(tmp_path / "one")))
    run(torchrun(*args, "--out", str(tmp_path / "two")))
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    one, two = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert [r["train_loss"] for r in one["history"]] == pytest.approx([r["train_loss"] for r in two["history"]],
                                                                      rel=1e-5)
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["runtime"]["processes"] == 2 and "processes" not in json.loads(
        (tmp_path / "one" / "config.json").read_text())["runtime"]
    assert not list((tmp_path / "two").glob("**/*.tmp"))  # rank 1 wrote nothing, rank 0 left no temp file


# the other training modes, one epoch each; the certified ones over an eps ramp (per-batch eps, kappa, beta)
OTHER_DEFENSES = {
    "fgsm": ["--defense", "fgsm", "--eps", "0.1"],
    "fgsm-rs": ["--defense", "fgsm-rs", "--eps", "0.1"],
    "trades": ["--defense", "trades", "--eps", "0.1", "--trades-steps", "3"],
    "ibp": ["--defense", "ibp", "--eps", "0.05", "--eps-warmup-epochs", "1"],
    "crown-ibp": ["--defense", "crown-ibp", "--eps", "0.05", "--eps-warmup-epochs", "1"],
    "noise": ["--defense", "noise", "--noise-sigma", "0.25"],
}


@pytest.mark.slow  # about 15 s of CPU per mode (14-29 s each on a quiet machine): two one-epoch runs
@pytest.mark.parametrize("defense", list(OTHER_DEFENSES))
def test_every_training_mode_on_two_processes_matches_one(tmp_path, defense):
    args = BASE + OTHER_DEFENSES[defense] + ["--epochs", "1"]
    run(cli(*args, "--out", str(tmp_path / "one")))
    run(torchrun(*args, "--out", str(tmp_path / "two")))
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    one, two = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert one["history"][0]["train_loss"] == pytest.approx(two["history"][0]["train_loss"], rel=1e-5)


@pytest.mark.slow  # about 25 s: three runs
def test_every_rank_resumes_from_the_checkpoint(tmp_path):
    # a constant learning rate, so that 1 epoch resumed to 2 (--force-resume) is 2 epochs
    args = BASE + DEFENSES["pgd"] + ["--schedule", "constant"]
    run(cli(*args, "--out", str(tmp_path / "one")))
    run(torchrun(*args, "--epochs", "1", "--out", str(tmp_path / "two")))
    run(torchrun(*args, "--out", str(tmp_path / "two"), "--resume", "--force-resume"))
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_batch_size_not_divisible_is_an_error(tmp_path):
    import subprocess

    from torchrun_helpers import env

    done = subprocess.run(torchrun(*[a if a != "64" else "63" for a in BASE], "--out", str(tmp_path / "r")),
                          env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "must be divisible by the number of processes (2)" in done.stderr
