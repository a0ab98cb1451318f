"""Killing one rank of a 2-process training job fails the whole job with torchrun's report, and the run resumes
from its last checkpoint (on 2 processes again) to the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from torchrun_helpers import TIMEOUT, env, run, torchrun
from test_ddp_training import assert_same_weights
from trustlab.checkpoint import latest_checkpoint, load_checkpoint
from trustlab.training.state import check_train_state

EPOCHS = 30
ARGS = ["train", "--dataset", "digits", "--model", "mlp", "--epochs", str(EPOCHS), "--subset", "400",
        "--batch-size", "50", "--device", "cpu", "--defense", "pgd", "--eps", "0.1", "--pgd-steps", "5"]


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_children(kid)]
    return out


def _rank_pid(pid: int, rank: int) -> int | None:
    for child in _children(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK" in b" ".join(environ):
            return child
    return None


def _epochs_done(folder: Path) -> int:
    p = folder / "progress.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.mark.slow  # about 35 s: a killed 2-process run, its resume, and an uninterrupted one
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the rank's process through /proc")
def test_killing_one_rank_fails_the_job_and_the_run_resumes(tmp_path):
    folder = tmp_path / "two"
    proc = subprocess.Popen(torchrun(*ARGS, "--out", str(folder)), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _epochs_done(folder) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None, "the job ended before rank 1 could be killed"
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "FAILED" in stderr and "exitcode: -9" in stderr, stderr[-3000:]  # torchrun names the killed rank
    done = _epochs_done(folder)
    assert 1 <= done < EPOCHS
    ckpt = latest_checkpoint(folder)
    check_train_state(load_checkpoint(ckpt).state, ckpt, epochs=EPOCHS)
    run(torchrun(*ARGS, "--out", str(folder), "--resume"))
    # bitwise the weights of an uninterrupted 2-process run (a single process drifts from both by float
    # rounding in the all-reduce, ~4e-5 after these 240 Adam steps)
    run(torchrun(*ARGS, "--out", str(tmp_path / "uninterrupted")))
    assert_same_weights(tmp_path / "uninterrupted", folder, atol=0.0)
