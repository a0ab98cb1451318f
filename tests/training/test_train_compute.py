"""Training and attacking under bf16, channels-last and torch.compile (``trustlab.compute``), on the CPU: what the
run records, what belongs to its identity, and what is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trustlab.cli.main import main
from trustlab.compute import Compute
from trustlab.evaluation import attack_run
from trustlab.evaluation.attack_run import attack_id
from trustlab.runs import config_hash
from trustlab.threat import LpBall
from trustlab.training import TrainConfig, train_run

TINY = dict(dataset="digits", model="cnn-small", epochs=1, subset=100, batch_size=50, eps=0.1)


def test_the_default_identity_is_the_one_from_before_the_compute_settings():
    """fp32 runs keep their identity (and hash): only bf16 adds a key; channels-last and compile add none."""
    fields = set(TrainConfig.field_names())
    assert set(TrainConfig().identity_dict()) == fields - {"root", "device", "precision", "channels_last", "compile",
                                                           "sync_batchnorm"}
    plain = config_hash(TrainConfig().identity_dict())
    assert config_hash(TrainConfig(channels_last=True, compile=True).identity_dict()) == plain
    assert TrainConfig(precision="bf16").identity_dict()["precision"] == "bf16"
    assert TrainConfig(precision="bf16").compute == Compute("bf16")


def test_lib02_fp32_identities_are_those_of_the_commit_before_the_compute_settings():
    """Golden values computed with commit 5ce60ee: existing runs resume and existing evaluations are reused
    (a change here must be deliberate: it orphans every run and evaluation folder made before it)."""
    assert config_hash(TrainConfig().identity_dict()) == (
        "95b5f5ee8f6a2c1212e8d5cc61b8cae955982c1e6e24dfb0f134c0b90a896a34")
    pgd = TrainConfig.from_dict({"dataset": "mnist", "defense": "pgd", "pgd_steps": 40})
    assert config_hash(pgd.identity_dict()) == "faefef5d696b9f5b47834f148f112910891037e63bb97884443bc52515036f91"
    assert attack_id("pgd", LpBall(0.3), {"steps": 40, "restarts": 5}, subset=100) == (
        "pgd-linf-eps0.3-restarts5-steps40-bc4d1f67ec")


def test_inp19_bad_compute_settings_in_a_config_are_named():
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'half'"):
        TrainConfig(precision="half")
    with pytest.raises(ValueError, match=r"defense 'ibp' computes certified bounds on the plain float32 model"):
        TrainConfig.from_dict({"defense": "ibp", "eps": 0.1, "channels_last": True})


def test_a_bf16_run_records_its_settings_and_resumes_only_as_bf16(tmp_path):
    run = tmp_path / "bf16"
    config = TrainConfig.from_dict({**TINY, "defense": "fgsm-rs", "precision": "bf16", "channels_last": True})
    summary = train_run(config, run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["precision"] == "bf16" and saved["config"]["channels_last"] is True
    assert saved["identity"]["config_hash"] != config_hash(config.replace(precision="fp32").identity_dict())
    assert math.isfinite(summary["history"][0]["train_loss"]) and 0 <= summary["test_acc"] <= 1
    (run / "summary.json").unlink()  # as if killed after the last checkpoint: a resume finishes the run
    with pytest.raises(ValueError, match=r"config differs from the run in .* in \['precision'\]"):
        train_run(config.replace(precision="fp32"), run, resume=True, progress=False)
    # layout and compilation are not the run's identity: a resume may change them, and the change is recorded
    train_run(config.replace(channels_last=False), run, resume=True, progress=False)
    resumes = json.loads((run / "config.json").read_text())["resumes"]
    assert resumes == [{"epoch": 1, "changed": {"channels_last": [True, False]}}]


def test_data06_a_run_from_before_the_compute_settings_resumes_without_a_change(tmp_path):
    run = tmp_path / "old"
    train_run(TrainConfig(**TINY), run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    for key in ("precision", "channels_last", "compile"):
        del saved["config"][key]
    (run / "config.json").write_text(json.dumps(saved))
    (run / "summary.json").unlink()  # as if killed after the last checkpoint: a resume finishes the run
    assert train_run(TrainConfig(**TINY), run, resume=True, progress=False)["complete"]
    assert "resumes" not in json.loads((run / "config.json").read_text())  # no spurious precision: [None, "fp32"]


def test_a_bf16_attack_has_its_own_id_and_the_fp32_id_is_unchanged(tmp_path):
    run = tmp_path / "r"
    train_run(TrainConfig(**TINY), run, progress=False)
    threat, params = LpBall(0.1), {"steps": 2}
    assert attack_id("pgd", threat, params) == attack_id("pgd", threat, params, compute=Compute(channels_last=True))
    bf16_id = attack_id("pgd", threat, params, compute=Compute("bf16"))
    assert "-bf16-" in bf16_id and bf16_id != attack_id("pgd", threat, params)
    fp32 = attack_run(run, "pgd", threat, params, subset=20, progress=False)
    bf16 = attack_run(run, "pgd", threat, params, subset=20, progress=False, compute=Compute("bf16", True))
    folder = run / "attacks" / attack_id("pgd", threat, params, subset=20, compute=Compute("bf16", True))
    assert folder.is_dir() and len(list((run / "attacks").iterdir())) == 2
    config = json.loads((folder / "config.json").read_text())
    assert config["precision"] == "bf16" and config["compute"] == {"precision": "bf16", "channels_last": True,
                                                                    "compile": False}
    assert bf16["n"] == fp32["n"] == 20 and abs(bf16["clean_acc"] - fp32["clean_acc"]) <= 0.1
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    assert all(r["dist"] <= 0.1 + 1e-6 for r in records)  # the perturbation stayed in the ball (float32)


def test_cli_compute_flags_train_and_attack(tmp_path, capsys):
    run = tmp_path / "r"
    tiny = ["--dataset", "digits", "--model", "cnn-small", "--epochs", "1", "--subset", "60"]
    assert main(["--quiet", "train", *tiny, "--out", str(run), "--precision", "bf16", "--channels-last"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["precision"] == "bf16"
    assert main(["--quiet", "attack", str(run), "--eps", "0.1", "--steps", "2", "--subset", "10",
                 "--precision", "bf16", "--channels-last"]) == 0
    (folder,) = (run / "attacks").iterdir()
    assert "-bf16-" in folder.name
    with pytest.raises(SystemExit) as exit_:
        main(["train", *tiny, "--out", str(tmp_path / "x"), "--precision", "fp16"])
    assert exit_.value.code == 2 and "argument --precision: invalid choice: 'fp16'" in capsys.readouterr().err


def test_cli_compile_without_a_compiler_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    assert main(["--quiet", "train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "60",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    assert main(["attack", str(run), "--eps", "0.1", "--compile", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustlab attack: error: --compile on the CPU needs a C++ compiler") and "\n" not in err
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "c"), "--compile",
                 "--device", "cpu"]) == 2
    assert "--compile on the CPU needs a C++ compiler" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (run / "attacks").exists()


def test_bf16_training_on_the_cpu_keeps_the_weights_float32(tmp_path):
    run = tmp_path / "w"
    train_run(TrainConfig.from_dict({**TINY, "defense": "pgd", "pgd_steps": 2, "precision": "bf16"}), run,
              progress=False)
    from trustlab.checkpoint import latest_checkpoint, load_checkpoint

    model = load_checkpoint(latest_checkpoint(run)).model
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
