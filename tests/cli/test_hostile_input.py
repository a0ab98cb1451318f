"""INP-01/19 and issue 8 (finding 9): hostile and extreme values give one line naming the problem, exit 2, no
traceback, and leave no run folder behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trustlab.training import TrainConfig, train_run


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustlab.cli.main", "--quiet", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    train_run(TrainConfig(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50), out, progress=False)
    return out


def _one_line(r: subprocess.CompletedProcess, command: str, needle: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"trustlab {command}: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--eps", "1e308"], "eps must be at most 3.4e+38"),
    (["--eps", "0.1", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--eps", "0.1", "--batch-size", "-5"], "batch_size must be >= 1, got -5"),
])
def test_inp01_attack_extreme_values(run, args, needle):
    _one_line(_run("attack", str(run), *args), "attack", needle)


def test_inp01_train_eps_beyond_float32_leaves_no_folder(tmp_path):
    out = tmp_path / "r"
    _one_line(_run("train", "--dataset", "digits", "--defense", "pgd", "--eps", "1e308", "--out", str(out)), "train",
              "eps must be at most")
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    (b"a = " + b"[" * 100_000, "values nested too deeply"),
    (b"epochs = \xff\n", "not UTF-8 text"),
    (b'root = 5\ndataset = "digits"\n', "root must be a folder path (a string), got 5"),
])
def test_inp19_hostile_toml_names_the_file(tmp_path, text, needle):
    cfg = tmp_path / "recipe.toml"
    cfg.write_bytes(text)
    r = _run("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    _one_line(r, "train", needle)
    assert str(cfg) in r.stderr or "root" in needle
    assert not (tmp_path / "r").exists()


def test_sec12_terminal_escapes_in_a_run_path_are_printed_escaped(tmp_path):
    out = tmp_path / "run\x1b[2J\x1b]0;owned\x07"
    r = _run("train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "100", "--out", str(out))
    assert r.returncode == 0, r.stderr
    a = _run("attack", str(out), "--attack", "fgsm", "--eps", "0.1")
    assert a.returncode == 0, a.stderr
    for printed in (r.stdout, a.stdout):
        assert "\x1b" not in printed and "\x07" not in printed
        assert "run\\x1b[2J\\x1b]0;owned\\x07: " in printed
    e = _run("attack", str(out) + "-missing", "--eps", "0.1")
    assert "\x1b" not in e.stderr and "\\x1b[2J" in e.stderr
