"""The GPU path's scripts stay runnable without a GPU: the acceptance script's arguments and the commands it would
run (checked against the CLI's own parser), and a tiny pass of the training-throughput benchmark on the CPU."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

from trustlab.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.sh"


def _script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_acceptance_dry_run_prints_commands_the_cli_accepts():
    done = _script("--dry-run")
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    trustlab = [c[3:] for c in commands if c[1:3] == ["-m", "trustlab"]]
    assert [c[1] for c in trustlab] == ["train", "attack", "train", "attack"]
    parser = build_parser()
    for argv in trustlab:
        parser.parse_args(argv)  # an unknown or misspelt flag exits 2 here
    configs = [Path(c[c.index("--config") + 1]) for c in trustlab if c[1] == "train"]
    assert [p.name for p in configs] == ["mnist_madry_fgsm_rs.toml", "mnist_madry_pgd.toml"]
    assert all(p.is_file() for p in configs)
    attack = trustlab[1]
    assert attack[attack.index("--steps") + 1] == "50" and attack[attack.index("--restarts") + 1] == "10"
    (bench,) = [c for c in commands if c[1].endswith("training_throughput.py")]
    variants = bench[bench.index("--variants") + 1:]
    assert {"fp32", "bf16", "channels-last", "compile", "bf16+channels-last+compile"} <= set(variants)


def test_acceptance_refuses_unknown_arguments_and_missing_mnist(tmp_path):
    done = _script("--bogus")
    assert done.returncode == 2 and "unknown argument '--bogus'" in done.stderr
    done = _script("--device", "cpu", "--runs", str(tmp_path / "runs"), "fgsm-rs", TRUSTLAB_DATA=str(tmp_path))
    assert done.returncode == 2 and f"MNIST not found under {tmp_path}/mnist/" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_training_throughput_runs_a_tiny_pass_on_the_cpu(capsys):
    spec = importlib.util.spec_from_file_location("training_throughput", REPO / "benchmarks" / "training_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--batch", "2", "--batches", "1", "--repeats", "1", "--variants", "fp32", "bf16",
                "--workloads", "standard", "--root", "/nonexistent"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] == ["standard"]]
    assert [(r[0], r[1]) for r in rows] == [("standard", "fp32"), ("standard", "bf16")]
    assert all(float(r[2]) > 0 and float(r[5]) > 0 for r in rows)  # images per second, median ratio
    assert "random images of CIFAR-10's shape" in lines[0]


def test_acceptance_smoke_dry_run_shrinks_every_command():
    done = _script("--dry-run", "--smoke")
    lines = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert done.returncode == 0 and len(lines) == 5
    assert all("--subset" in line for line in lines if " train " in line or " attack " in line)
    assert lines[-1].endswith("--quick") and "--variants" not in lines[-1]
