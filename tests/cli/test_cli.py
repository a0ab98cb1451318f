"""The command line: train and attack end to end on digits, bad input exits non-zero with one line (INP-19)."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import pytest

from trustlab.cli.main import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustlab.cli.main", "--quiet", *args], capture_output=True, text=True)


def test_train_then_attack_writes_run_folder(tmp_path):
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--out", str(run)]) == 0
    for name in ("config.json", "records.jsonl", "summary.json", "progress.jsonl", "checkpoints/latest.json"):
        assert (run / name).exists(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["seed"] == 0 and "torch" in cfg["versions"]
    assert main(["--quiet", "attack", str(run), "--attack", "pgd", "--eps", "0.1", "--steps", "5", "--restarts", "2"]) == 0
    (adir,) = (run / "attacks").iterdir()
    rows = [json.loads(line) for line in (adir / "records.jsonl").read_text().splitlines()]
    summary = json.loads((adir / "summary.json").read_text())
    from trustlab.data import make_splits

    assert len(rows) == summary["n"] == len(make_splits("digits", seed=0).test[1])  # the whole test split
    assert summary["robust_acc"] == sum(r["robust"] for r in rows) / len(rows) <= summary["clean_acc"]
    assert all(r["dist"] <= 0.1 + 1e-6 for r in rows)
    attack_cfg = json.loads((adir / "config.json").read_text())
    assert attack_cfg["attack"]["steps"] == 5 and attack_cfg["attack"]["restarts"] == 2


def test_toml_config_with_flag_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndataset = "digits"\nmodel = "mlp"\nepochs = 5\nsubset = 100\n')
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--config", str(cfg), "--epochs", "1", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["epochs"] == 1 and saved["model"] == "mlp" and saved["subset"] == 100


def test_keep_best_from_toml_and_flag(tmp_path, capsys):
    """``keep_best = true`` in a recipe holds when the flag is absent; the attack then evaluates the kept epoch."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndataset = "digits"\nmodel = "mlp"\ndefense = "fgsm-rs"\neps = 0.1\nepochs = 3\n'
                   'subset = 200\nkeep_best = true\n')
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--config", str(cfg), "--out", str(run)]) == 0
    assert "(best val_pgd_acc)" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "config.json").read_text())["config"]["keep_best"] is True
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["name"] == "final"
    assert 1 <= summary["selected_epoch"] <= 3
    run2 = tmp_path / "run2"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "100",
                 "--out", str(run2)]) == 0
    assert json.loads((run2 / "config.json").read_text())["config"]["keep_best"] is False


@pytest.mark.parametrize("args, needle", [
    (["train", "--dataset", "digits", "--eps", "-1", "--out", "X"], "eps"),
    (["train", "--dataset", "nope", "--out", "X"], "nope"),
    (["train", "--model", "builtins.eval", "--dataset", "digits", "--out", "X"], "builtins.eval"),
    (["attack", "X", "--eps", "0.1"], "no valid checkpoint"),
])
def test_inp_bad_cli_input_one_line_no_traceback(tmp_path, args, needle):
    args = [a.replace("X", str(tmp_path / "r")) for a in args]
    r = _run(*args)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_inp19_unknown_toml_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "mlp"\n_target_ = "os.system"\n')
    r = _run("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "_target_" in r.stderr and "valid keys" in r.stderr
    assert not (tmp_path / "r").exists()


def test_sec01_cli_refuses_pickle_checkpoint(tmp_path):
    """SEC-01 through the CLI: a run whose state file is a malicious pickle is refused; the payload never runs."""
    import pickle

    from trustlab.checkpoint import canonical_sha256

    run = tmp_path / "run"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "50",
                 "--out", str(run)]) == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    (ckpt / "state.pt").write_bytes(pickle.dumps(Evil()))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    import hashlib

    manifest["files"]["state.pt"] = hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()
    manifest["sizes"]["state.pt"] = (ckpt / "state.pt").stat().st_size
    if "manifest_sha256" in manifest:
        body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        manifest["manifest_sha256"] = canonical_sha256(body)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    r = _run("attack", str(run), "--eps", "0.1", "--steps", "2")
    assert r.returncode != 0 and "not a safe trustlab state file" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_report_and_optim_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "100",
                 "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "fgsm", "--eps", "0.1"]) == 0
    assert main(["--quiet", "report", str(run), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert 'id="matrix"' in page and "fgsm" in page
    assert main(["--quiet", "optim", "--out", str(tmp_path / "optim")]) == 0
    assert (tmp_path / "optim" / "optim.md").read_text().count("![") == 5
    assert "Report:" in capsys.readouterr().out
