"""The GPU-sized recipes in configs/ run, as written in their headers, on a tiny subset on the CPU.

Each recipe's header holds the commands that train and evaluate it (``#   trustlab ...``); the test runs those
very commands through the CLI, with overrides appended (a tiny ``--subset``, one epoch, the CPU, a one-step
attack), so a recipe and its commands cannot drift apart. The CIFAR-10 recipes train on files the test writes in
CIFAR-10's binary format (no copy of CIFAR-10 exists here); the MNIST ones on ``$TRUSTLAB_DATA``'s MNIST.
The ensemble lines are not run (minutes even on 4 images; the ensemble has its own tests).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from trustlab.cli.config import load_toml
from trustlab.cli.main import main
from trustlab.data.cifar10 import RECORD_BYTES
from trustlab.data.sources import CIFAR_BIN_DIR, CIFAR_BINS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAIN_OVERRIDES = ["--epochs", "1", "--subset", "8", "--val-size", "8", "--batch-size", "8", "--eval-batch-size", "8",
                   "--device", "cpu", "--quiet"]
ATTACK_OVERRIDES = ["--subset", "4", "--steps", "1", "--restarts", "1", "--batch-size", "4", "--device", "cpu",
                    "--quiet"]


def header_commands(recipe: Path) -> list[list[str]]:
    """The ``trustlab`` commands of a recipe's header comment, as argument lists without ``trustlab``."""
    lines = [line[1:].strip() for line in recipe.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(line)[1:] for line in lines if line.startswith("trustlab ")]


def write_cifar_bins(root: Path, n: int = 10) -> None:
    """``n`` random records per CIFAR-10 batch file, in its binary format (1 label byte, 3072 pixel bytes)."""
    folder = root / "cifar10" / CIFAR_BIN_DIR
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*CIFAR_BINS["train"], *CIFAR_BINS["test"]]:
        records = rng.integers(0, 256, size=(n, RECORD_BYTES), dtype=np.uint8)
        records[:, 0] %= 10  # labels in [0, 10)
        (folder / name).write_bytes(records.tobytes())


def run_recipe(recipe: Path, root: Path, tmp_path: Path) -> None:
    commands = header_commands(recipe)
    train, attacks = commands[0], [c for c in commands[1:] if c[0] == "attack" and "ensemble" not in c]
    assert train[:3] == ["train", "--config", f"configs/{recipe.name}"], f"{recipe.name} trains another recipe"
    assert attacks, f"{recipe.name} names no PGD evaluation"
    out = tmp_path / "run"
    train = [str(CONFIGS / recipe.name) if a == f"configs/{recipe.name}" else a for a in train]
    train[train.index("--out") + 1] = str(out)
    assert main([*train, *TRAIN_OVERRIDES, "--root", str(root)]) == 0
    values = load_toml(recipe, section="train")
    saved = json.loads((out / "config.json").read_text())["config"]
    assert {k: saved[k] for k in ("dataset", "model", "epochs")} == {**{k: values[k] for k in ("dataset", "model")},
                                                                      "epochs": 1}
    assert saved["defense"]["name"] == values.get("defense", "none")
    for attack in attacks:
        attack[1] = str(out)
        assert main([*attack, *ATTACK_OVERRIDES, "--root", str(root)]) == 0
        (folder,) = (out / "attacks").iterdir()
        config = json.loads((folder / "config.json").read_text())
        eps = float(attack[attack.index("--eps") + 1])
        assert config["threat"]["eps"] == eps and config["attack"]["step_size"] == float(
            attack[attack.index("--step-size") + 1])
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["n"] == 4 and summary["robust_acc"] <= summary["clean_acc"]


# Seconds each on the 2-core machine (measured): CIFAR-10 standard 3, FGSM-RS 9.5 and PGD-7 6.6 (PreAct
# ResNet-18's attack passes and the PGD-10 check), the MNIST ones 1.6 and 2.1; the two slowest are marked slow.
CIFAR = ["cifar10_standard.toml", pytest.param("cifar10_fgsm_rs.toml", marks=pytest.mark.slow),
         pytest.param("cifar10_pgd7.toml", marks=pytest.mark.slow)]
MNIST = ["mnist_madry_fgsm_rs.toml", "mnist_madry_pgd.toml"]


@pytest.mark.parametrize("name", CIFAR)
def test_cifar10_recipe_runs_as_written_on_files_in_the_binary_format(name, tmp_path):
    root = tmp_path / "data"
    write_cifar_bins(root)
    run_recipe(CONFIGS / name, root, tmp_path)


@pytest.mark.parametrize("name", MNIST)
def test_madry_mnist_recipe_runs_as_written_on_a_subset(name, tmp_path, shared_data_root):
    run_recipe(CONFIGS / name, shared_data_root, tmp_path)


def test_cifar10_recipes_are_wong_et_al_s_at_eps_8_255():
    """The values the headers cite (Wong et al. 2020; Madry et al. 2018), so an edit that drifts from them fails."""
    common = {"dataset": "cifar10", "model": "preact-resnet18", "epochs": 15, "batch_size": 128,
              "optimizer": "momentum", "lr": 0.2, "momentum": 0.9, "weight_decay": 0.0005, "schedule": "cyclic"}
    recipes = {n: load_toml(CONFIGS / f"cifar10_{n}.toml", section="train") for n in ("standard", "fgsm_rs", "pgd7")}
    for values in recipes.values():
        assert {k: values[k] for k in common} == common
    assert recipes["fgsm_rs"]["eps"] * 255 == pytest.approx(8) and recipes["pgd7"]["eps"] * 255 == pytest.approx(8)
    assert recipes["fgsm_rs"]["fgsm_rs_step_size"] * 255 == pytest.approx(10)
    assert recipes["pgd7"]["pgd_steps"] == 7 and recipes["pgd7"]["pgd_step_size"] * 255 == pytest.approx(2)
    for n in recipes:  # evaluated with PGD-50, 10 restarts, step 2/255
        (attack,) = [c for c in header_commands(CONFIGS / f"cifar10_{n}.toml") if c[0] == "attack"]
        flags = dict(zip(attack[2::2], attack[3::2]))
        assert flags["--steps"] == "50" and flags["--restarts"] == "10"
        assert float(flags["--step-size"]) * 255 == pytest.approx(2) and float(flags["--eps"]) * 255 == pytest.approx(8)
