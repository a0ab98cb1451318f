"""The command line's shape: options anywhere, no abbreviations, choices in --help, flags an attack does not take
are errors, booleans that can be turned off, the matrix's evaluation flags kept out of training, and commands
that register themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from trustlab.cli.main import build_parser, main

TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "60"]


def _run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustlab", *args], capture_output=True, text=True, **kw)


def test_python_dash_m_trustlab_and_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("trustlab ")


def test_global_options_work_after_the_subcommand(tmp_path):
    assert main(["train", *TINY, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["--quiet", "train", *TINY, "--out", str(tmp_path / "b")]) == 0


def test_abbreviated_options_are_refused(tmp_path):
    r = _run("train", "--dataset", "digits", "--ep", "1", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "unrecognized arguments: --ep 1" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_enumerated_flags_list_their_choices_in_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for choices in ("{none,fgsm,fgsm-rs,pgd,trades,ibp,crown-ibp,noise}", "{auto,cpu,cuda}", "{sgd,momentum,adam,adamw}", "{inf,2}"):
        assert choices in help_text.replace("\n", "").replace(" ", ""), choices
    attack_help = build_parser()._subparsers._group_actions[0].choices["attack"].format_help()
    assert "{apgd,apgd-t,ensemble,fab,fab-t,fgsm,fgsm-rs,linear,pgd,square}" in attack_help
    assert "--ensemble-version {rand,standard}" in attack_help
    assert "--n-target-classes" in attack_help


def test_a_flag_the_attack_does_not_take_is_an_error(tmp_path):
    run = tmp_path / "r"
    assert main(["--quiet", "train", *TINY, "--out", str(run)]) == 0
    r = _run("--quiet", "attack", str(run), "--attack", "fgsm", "--eps", "0.1", "--steps", "50")
    assert r.returncode == 2
    assert r.stderr.strip() == ("trustlab attack: error: attack 'fgsm' does not take --steps; it takes ['--loss']")
    assert not (run / "attacks").exists()
    assert main(["--quiet", "attack", str(run), "--attack", "fgsm-rs", "--eps", "0.1", "--step-size", "0.05"]) == 0
    (folder,) = (run / "attacks").iterdir()
    assert json.loads((folder / "config.json").read_text())["attack"]["step_size"] == 0.05


def test_apgd_and_apgd_t_end_to_end(tmp_path):
    run = tmp_path / "r"
    assert main(["--quiet", "train", *TINY, "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "apgd", "--eps", "0.1", "--steps", "20"]) == 0
    (folder,) = (run / "attacks").iterdir()
    record = json.loads((folder / "config.json").read_text())["attack"]
    assert record["attack"] == "apgd" and record["steps"] == 20 and record["rho"] == 0.75
    assert record["checkpoints"] == [0, 5, 9, 12, 14, 16, 18, 19, 20]  # ceil of 20 * (0, .22, .41, ..., .93, .99)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["robust_acc"] <= summary["clean_acc"]
    r = _run("--quiet", "attack", str(run), "--attack", "apgd", "--eps", "0.1", "--step-size", "0.05")
    assert r.returncode == 2
    assert r.stderr.strip() == ("trustlab attack: error: attack 'apgd' does not take --step-size; "
                                "it takes ['--steps', '--restarts', '--loss']")
    assert main(["--quiet", "attack", str(run), "--attack", "apgd-t", "--eps", "0.1", "--steps", "5", "--p", "2"]) == 0
    assert len(list((run / "attacks").iterdir())) == 2


def test_square_end_to_end_with_queries(tmp_path):
    run = tmp_path / "r"
    assert main(["--quiet", "train", *TINY, "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "square", "--eps", "0.1", "--queries", "50"]) == 0
    (folder,) = (run / "attacks").iterdir()
    record = json.loads((folder / "config.json").read_text())["attack"]
    assert record["attack"] == "square" and record["queries"] == 50 and record["loss"] == "margin"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["robust_acc"] <= summary["clean_acc"]
    r = _run("--quiet", "attack", str(run), "--attack", "square", "--eps", "0.1", "--steps", "5")
    assert r.returncode == 2
    assert r.stderr.strip() == ("trustlab attack: error: attack 'square' does not take --steps; "
                                "it takes ['--loss', '--queries']")
    r = _run("--quiet", "attack", str(run), "--attack", "pgd", "--eps", "0.1", "--queries", "100")
    assert r.returncode == 2
    assert "attack 'pgd' does not take --queries" in r.stderr
    assert len(list((run / "attacks").iterdir())) == 1


def test_fab_and_fab_t_end_to_end(tmp_path):
    run = tmp_path / "r"
    assert main(["--quiet", "train", *TINY, "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "fab-t", "--eps", "0.1", "--steps", "5",
                 "--n-target-classes", "2"]) == 0
    (folder,) = (run / "attacks").iterdir()
    record = json.loads((folder / "config.json").read_text())["attack"]
    assert record["attack"] == "fab-t" and record["steps"] == 5 and record["n_target_classes"] == 2
    assert record["alpha_max"] == 0.1 and record["eta"] == 1.05 and record["beta"] == 0.9
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["robust_acc"] <= summary["clean_acc"]
    r = _run("--quiet", "attack", str(run), "--attack", "fab", "--eps", "0.1", "--n-target-classes", "3")
    assert r.returncode == 2
    assert r.stderr.strip() == ("trustlab attack: error: attack 'fab' does not take --n-target-classes; "
                                "it takes ['--steps', '--restarts']")
    assert main(["--quiet", "attack", str(run), "--attack", "apgd-t", "--eps", "0.1", "--steps", "3",
                 "--n-target-classes", "1"]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "fab", "--eps", "0.5", "--p", "2", "--steps", "5"]) == 0
    assert len(list((run / "attacks").iterdir())) == 3


def test_ensemble_end_to_end_with_its_version(tmp_path):
    run = tmp_path / "r"
    assert main(["--quiet", "train", *TINY, "--out", str(run)]) == 0
    assert main(["--quiet", "attack", str(run), "--attack", "ensemble", "--eps", "0.1", "--subset", "5"]) == 0
    (folder,) = (run / "attacks").iterdir()
    record = json.loads((folder / "config.json").read_text())["attack"]
    assert record["attack"] == "ensemble" and record["version"] == "standard-v1"
    assert [m["attack"] for m in record["members"]] == ["apgd", "apgd-t", "fab-t", "square"]
    assert record["members"][3]["queries"] == 5000
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n"] == 5 and summary["robust_acc"] <= summary["clean_acc"]
    assert main(["--quiet", "attack", str(run), "--attack", "ensemble", "--eps", "0.5", "--p", "2",
                 "--ensemble-version", "rand", "--subset", "3"]) == 0
    (rand,) = (f for f in (run / "attacks").iterdir() if f != folder)
    assert rand.name.startswith("ensemble-l2-eps0.5-versionrand-")
    assert json.loads((rand / "config.json").read_text())["attack"]["version"] == "rand-v1"
    assert main(["--quiet", "attack", str(run), "--attack", "ensemble", "--eps", "0.5", "--p", "2", "--subset",
                 "2"]) == 0
    (standard_l2,) = (f for f in (run / "attacks").iterdir() if f not in (folder, rand))
    record = json.loads((standard_l2 / "config.json").read_text())["attack"]
    assert record["version"] == "standard-v1" and record["p"] == 2.0
    assert [(m["attack"], m["p"]) for m in record["members"]] == [
        ("apgd", 2.0), ("apgd-t", 2.0), ("fab-t", 2.0), ("square", 2.0)]
    r = _run("--quiet", "attack", str(run), "--attack", "pgd", "--eps", "0.1", "--ensemble-version", "rand")
    assert r.returncode == 2
    assert "attack 'pgd' does not take --ensemble-version" in r.stderr
    r = _run("--quiet", "attack", str(run), "--attack", "ensemble", "--eps", "0.1", "--steps", "5")
    assert r.stderr.strip() == ("trustlab attack: error: attack 'ensemble' does not take --steps; "
                                "it takes ['--ensemble-version']")
    assert len(list((run / "attacks").iterdir())) == 3


def test_no_keep_best_turns_off_a_recipe_setting(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndataset = "digits"\nmodel = "mlp"\ndefense = "fgsm-rs"\neps = 0.1\nepochs = 1\n'
                   'subset = 60\nkeep_best = true\n')
    run = tmp_path / "r"
    assert main(["--quiet", "train", "--config", str(cfg), "--no-keep-best", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["keep_best"] is False


def test_defense_options_as_flags_and_as_a_toml_table(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndataset = "digits"\nmodel = "mlp"\neps = 0.1\nepochs = 1\nsubset = 60\n'
                   '[train.defense]\nname = "trades"\nbeta = 2.0\nsteps = 2\n')
    assert main(["--quiet", "train", "--config", str(cfg), "--trades-beta", "3", "--out", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["defense"]
    assert saved == {"name": "trades", "beta": 3.0, "steps": 2, "step_size": None}
    r = _run("train", *TINY, "--defense", "fgsm", "--pgd-steps", "3", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "set options of defense(s) ['pgd'], but the defense is 'fgsm'" in r.stderr


def test_top_level_keys_beside_a_train_table_are_an_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('epochs = 2\nbogus_key = 1\n[train]\ndataset = "digits"\n')
    r = _run("train", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "keys ['bogus_key', 'epochs'] lie outside the [train] table" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_and_cpu_is_recorded(tmp_path):
    r = _run("train", *TINY, "--device", "cuda", "--out", str(tmp_path / "gpu"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "device 'cuda' asked for" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "gpu").exists()
    assert main(["--quiet", "train", *TINY, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    saved = json.loads((tmp_path / "cpu" / "config.json").read_text())
    assert saved["config"]["device"] == "cpu" and saved["runtime"]["device"] == "cpu"


def test_a_log_redirected_to_a_file_has_one_line_per_epoch_and_no_bar_frames(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "trustlab", "train", "--dataset", "digits", "--model", "mlp",
                            "--epochs", "3", "--subset", "100", "--out", str(tmp_path / "r")], stderr=f,
                           stdout=subprocess.DEVNULL)
    text = log.read_text()
    assert r.returncode == 0 and "\r" not in text
    assert [line.split(":")[1].strip() for line in text.splitlines() if " epoch " in line and "/3:" in line] == [
        "epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_a_new_subcommand_is_one_module_and_one_registration(tmp_path, monkeypatch, capsys):
    (tmp_path / "hello_cmd.py").write_text(
        'NAME = "hello"\nHELP = "say hello"\n\ndef add_arguments(p):\n    p.add_argument("--who", default="world")\n\n'
        'def run(args):\n    print(f"hello {args.who}")\n    return 0\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from trustlab.cli import commands

    monkeypatch.setattr(commands, "COMMAND_MODULES", (*commands.COMMAND_MODULES, "hello_cmd"))
    assert main(["hello", "--who", "trustlab", "--quiet"]) == 0
    assert capsys.readouterr().out == "hello trustlab\n"


def test_matrix_cli_reuses_runs_when_only_evaluation_flags_change(tmp_path, capsys):
    """The bug fixed: `matrix --pgd-steps` changed the trained models' config, so a second call refused reuse."""
    out = tmp_path / "m"
    common = ["--quiet", "matrix", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--subset", "60",
              "--eps", "0.1", "--train", "none,fgsm", "--eval", "clean,fgsm,pgd", "--eps-grid", "0.05",
              "--curve-subset", "30", "--out", str(out)]
    assert main([*common, "--pgd-steps", "3"]) == 0
    first = capsys.readouterr().out
    assert "| train-none |" in first and "PGD: 3 steps" in first
    weights = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    saved = json.loads((out / "train-fgsm" / "config.json").read_text())["config"]
    assert main([*common, "--pgd-steps", "4", "--no-convergence-check"]) == 0
    assert "PGD: 4 steps" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == weights  # nothing retrained
    assert json.loads((out / "train-fgsm" / "config.json").read_text())["config"] == saved
    assert "pgd" not in json.dumps(saved["defense"])


def test_matrix_cli_bad_input_is_one_line(tmp_path):
    r = _run("matrix", "--train", "none,bogus", "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "train must be a non-empty subset of" in r.stderr and "bogus" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
