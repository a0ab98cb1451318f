"""Helpers of the distributed tests: a ``torchrun`` of ``python -m trustlab`` with 2 gloo processes on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT = 240  # seconds: a hung rendezvous or collective fails the test instead of hanging it


def env() -> dict[str, str]:
    """The test's environment without torchrun's variables, one thread per process, trustlab's sources first."""
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    e["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    e["OMP_NUM_THREADS"] = "1"
    return e


def cli(*args: str) -> list[str]:
    """``python -m trustlab --quiet ARGS`` as one process."""
    return [sys.executable, "-m", "trustlab", "--quiet", *args]


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """The same under ``torchrun --standalone`` (it picks a free port for the rendezvous itself)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trustlab", "--quiet", *args]


def run(command: list[str], *, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``command``; fail naming its output unless it exits 0."""
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done
