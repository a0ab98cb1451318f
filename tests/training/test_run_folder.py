"""DATA-09 and issue 8: a run folder is trustlab's only with its marker, has one writer, and is replaced only
once the new run is committed; progress and config.json stay true to the committed checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trustlab.training.run as run_module
from trustlab.checkpoint import latest_checkpoint
from trustlab.errors import RunInUseError
from trustlab.runs.folder import LOCK, MARKER, run_lock
from trustlab.training import TrainConfig, train_run


def _tiny(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (it is not an Exception, so no handler catches it)."""


def test_data09_overwrite_refuses_a_folder_without_trustlab_marker(tmp_path):
    out = tmp_path / "P"
    (out / "src").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match=f"not a trustlab run folder .no {MARKER}"):
        train_run(_tiny(), out, overwrite=True, progress=False)
    assert (out / "thesis.tex").read_text() == "x" and (out / "src").is_dir()


def test_data09_overwrite_keeps_foreign_files_and_the_current_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_run(_tiny(), run, progress=False)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"files trustlab did not write \['notes.txt'\]"):
        train_run(_tiny(), run, overwrite=True, progress=False)
    (run / "notes.txt").unlink()
    monkeypatch.chdir(run)
    with pytest.raises(FileExistsError, match="current directory"):
        train_run(_tiny(), Path("."), overwrite=True, progress=False)
    assert (run / "summary.json").is_file()


def test_data09_overwrite_replaces_a_run_only_once_the_new_one_is_committed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train_run(_tiny(), run, progress=False)
    before = _snapshot(run)

    def fail(*args, **kwargs):
        raise RuntimeError("the new run fails in its first epoch")

    monkeypatch.setattr(run_module, "train_epoch", fail)
    with pytest.raises(RuntimeError, match="first epoch"):
        train_run(_tiny(lr=0.2), run, overwrite=True, progress=False)
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k != LOCK} == {k: v for k, v in before.items() if k != LOCK}
    monkeypatch.undo()
    summary = train_run(_tiny(lr=0.2), run, overwrite=True, progress=False)
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == 0.2
    assert json.loads((run / "summary.json").read_text()) == summary
    assert (run / MARKER).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left beside it


def test_data09_second_writer_gets_run_in_use_error(tmp_path):
    run = tmp_path / "run"
    train_run(_tiny(), run, progress=False)
    with run_lock(run):
        with pytest.raises(RunInUseError, match=f"run .*run is in use by PID {os.getpid()}"):
            train_run(_tiny(epochs=2), run, resume=True, force_resume=True, progress=False)
        with pytest.raises(RunInUseError, match="in use by PID"):
            train_run(_tiny(), run, overwrite=True, progress=False)


def test_data09_cli_second_writer_one_line_and_stale_lock_taken_over(tmp_path):
    run = tmp_path / "run"
    train_run(_tiny(), run, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from trustlab.runs.folder import run_lock\n"
         f"with run_lock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "trustlab.cli.main", "--quiet", "train", "--out", str(run),
                            "--resume", "--epochs", "2", "--force-resume"], capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    assert r.stderr.strip() == f"trustlab train: error: run {run} is in use by PID {holder.pid}; wait for it to finish"
    # the killed holder's lock file (with its PID) is left behind; the kernel dropped its lock
    assert (run / LOCK).read_text().strip() == str(holder.pid)
    assert train_run(_tiny(epochs=2), run, resume=True, force_resume=True, progress=False)["epochs"] == 2


def test_data06_progress_is_the_committed_history_after_a_kill_between_commit_and_row(tmp_path, monkeypatch):
    run = tmp_path / "run"
    commit = run_module.commit_checkpoint

    def commit_then_die(run_dir, name, *args, **kwargs):
        result = commit(run_dir, name, *args, **kwargs)
        if name == "epoch_0002":
            raise _Killed
        return result

    monkeypatch.setattr(run_module, "commit_checkpoint", commit_then_die)
    with pytest.raises(_Killed):
        train_run(_tiny(epochs=3), run, progress=False)
    monkeypatch.undo()
    train_run(_tiny(epochs=3), run, resume=True, progress=False)
    epochs = [json.loads(line)["epoch"] for line in (run / "progress.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_data06_resume_of_a_run_killed_before_its_first_checkpoint_starts_from_scratch(tmp_path, monkeypatch):
    run = tmp_path / "run"

    def die(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr(run_module, "train_epoch", die)
    with pytest.raises(_Killed):
        train_run(_tiny(), run, progress=False)
    monkeypatch.undo()
    assert latest_checkpoint(run) is None
    fresh = train_run(_tiny(), tmp_path / "fresh", progress=False)
    assert train_run(_tiny(), run, resume=True, progress=False)["test_acc"] == fresh["test_acc"]


def test_data06_force_resume_keeps_config_json_true_to_the_run(tmp_path):
    run = tmp_path / "run"
    train_run(_tiny(epochs=2), run, progress=False)
    train_run(_tiny(epochs=4), run, resume=True, force_resume=True, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["epochs"] == 4
    assert saved["resumes"] == [{"epoch": 2, "changed": {"epochs": [2, 4]}}]
    assert train_run(_tiny(epochs=4), run, resume=True, progress=False)["epochs"] == 4  # no --force-resume now
