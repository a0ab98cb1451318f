"""DATA-04/05/06/09 and AT-04: a SIGKILLed training run resumes to bitwise-identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trustlab.checkpoint import latest_checkpoint
from trustlab.training import TrainConfig, train_run

TRAIN_ARGS = ["--dataset", "digits", "--model", "cnn-small", "--defense", "pgd", "--eps", "0.1", "--pgd-steps", "3",
              "--epochs", "4", "--batch-size", "50", "--subset", "400", "--seed", "3"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trustlab.cli.main", "--quiet", *args]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def _epochs_done(run: Path) -> int:
    p = run / "progress.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _kill_after_epochs(run: Path, epochs: int) -> None:
    proc = subprocess.Popen(_cli("train", *TRAIN_ARGS, "--out", str(run)), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _epochs_done(run) < epochs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "A"
    subprocess.run(_cli("train", *TRAIN_ARGS, "--out", str(run)), check=True, stdout=subprocess.DEVNULL)
    return run


# the same property at two kill points: `make test` runs one, `make test-slow` the other
@pytest.mark.parametrize("kill_after", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_data04_sigkill_then_resume_gives_identical_weights(reference_run, tmp_path, kill_after):
    run = tmp_path / "B"
    _kill_after_epochs(run, kill_after)
    assert latest_checkpoint(run) is not None
    # the run's own config.json supplies the options: `trustlab train --out B --resume` is enough
    subprocess.run(_cli("train", "--out", str(run), "--resume"), check=True, stdout=subprocess.DEVNULL)
    a, b = _weights(reference_run), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (reference_run / "records.jsonl").read_bytes() == (run / "records.jsonl").read_bytes()
    epochs = [json.loads(line)["epoch"] for line in (run / "progress.jsonl").read_text().splitlines()]
    # an epoch interrupted after its checkpoint but before its progress line could repeat; none may be missing
    assert sorted(set(epochs)) == [1, 2, 3, 4]


def test_data09_resume_of_complete_run_changes_nothing(reference_run, tmp_path):
    before = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    subprocess.run(_cli("train", "--out", str(reference_run), "--resume", *TRAIN_ARGS), check=True,
                   stdout=subprocess.DEVNULL)
    after = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    assert before == after


def test_data09_refuses_nonempty_out_without_resume(reference_run):
    r = subprocess.run(_cli("train", *TRAIN_ARGS, "--out", str(reference_run)), capture_output=True, text=True)
    assert r.returncode != 0
    assert "--resume" in r.stderr and "Traceback" not in r.stderr


def _tiny(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", epochs=1, subset=100, batch_size=50, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_data06_resume_guards(tmp_path):
    with pytest.raises(FileNotFoundError, match="can't find a valid checkpoint"):
        train_run(_tiny(), tmp_path / "missing", resume=True, progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"empty: it is not a trustlab run folder"):
        train_run(_tiny(), tmp_path / "empty", resume=True, progress=False)
    run = tmp_path / "run"
    train_run(_tiny(epochs=2), run, progress=False)
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        train_run(_tiny(epochs=2, lr=0.1), run, resume=True, progress=False)


def test_data05_missing_state_file_fails_clearly(tmp_path):
    run = tmp_path / "run"
    train_run(_tiny(epochs=2), run, progress=False)
    os.remove(latest_checkpoint(run) / "state.pt")
    from trustlab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        train_run(_tiny(epochs=3), run, resume=True, force_resume=True, progress=False)


def test_data06_run_from_before_a_new_config_field_still_resumes(tmp_path):
    """A config.json written before a field existed matches when the field is at its default, and only then."""
    import json

    run = tmp_path / "run"
    first = train_run(_tiny(epochs=2), run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    del saved["config"]["keep_best"]
    saved["identity"]["config_hash"] = "0" * 64  # an older version hashed fewer fields
    (run / "config.json").write_text(json.dumps(saved))
    again = train_run(_tiny(epochs=2), run, resume=True, progress=False)
    assert again["test_acc"] == first["test_acc"]
    with pytest.raises(ValueError, match=r"'defense', 'keep_best'"):
        train_run(_tiny(epochs=2, defense="fgsm-rs", keep_best=True), run, resume=True, progress=False)


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two") / "run"
    train_run(_tiny(epochs=2), run, progress=False)
    return run


def _with_state(run: Path, edit) -> None:
    """Rewrite the latest checkpoint's state.pt with ``edit(state)`` (``None``: no state file) and re-sign it."""
    import hashlib
    import io

    from trustlab.checkpoint import canonical_sha256

    ckpt = latest_checkpoint(run)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    state = edit(torch.load(ckpt / "state.pt", weights_only=True))
    if state is None:
        os.remove(ckpt / "state.pt")
        del manifest["files"]["state.pt"]
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (ckpt / "state.pt").write_bytes(buffer.getvalue())
        manifest["files"]["state.pt"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest.pop("sizes", None)
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    (ckpt / "manifest.json").write_text(json.dumps({**body, "manifest_sha256": canonical_sha256(body)}))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: {k: v for k, v in s.items() if k != "epoch"}, r"state\.pt is missing epoch"),
        (lambda s: {**s, "epoch": "1"}, r"invalid epoch '1' \(need an int >= 0\)"),
        (lambda s: {**s, "epoch": -1}, "invalid epoch -1"),
        (lambda s: {**s, "epoch": 10**9}, r"history that is not one row per epoch 1\.\.1000000000"),
        (lambda s: {**s, "history": s["history"][:1]}, r"history that is not one row per epoch 1\.\.2"),
        (lambda s: {**s, "optimizer": {"state": {}}}, "invalid optimizer or scheduler state"),
        (lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": []}}, "does not fit this run"),
        (lambda s: {**s, "train_seconds": float("nan")}, "invalid train_seconds nan"),
        (lambda s: None, r"epoch_0002 has no training state \(state\.pt\); it cannot be resumed"),
    ],
)
def test_data06_training_state_has_a_schema(two_epoch_run, tmp_path, edit, message):
    """A hostile or damaged state.pt is one CheckpointError before anything resumes, never a KeyError, a TypeError
    or a resume that silently 'completes' at epoch 10**9."""
    from trustlab.errors import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    _with_state(run, edit)
    with pytest.raises(CheckpointError, match=message):
        train_run(_tiny(epochs=3), run, resume=True, force_resume=True, progress=False)


def test_data06_checkpoint_past_the_configured_epochs_is_refused(two_epoch_run, tmp_path):
    from trustlab.errors import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(two_epoch_run, run)
    with pytest.raises(CheckpointError, match=r"is at epoch 2, past the configured epochs \(1\)"):
        train_run(_tiny(epochs=1), run, resume=True, force_resume=True, progress=False)
