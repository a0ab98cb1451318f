"""``sync_batchnorm``: SyncBatchNorm under torchrun where torch can sync it (GPUs), a clear refusal on the CPU, a
no-op on one process, plain BatchNorm keys in the checkpoint, and the run's identity unchanged when not set."""

from __future__ import annotations

import json
import logging
import subprocess

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from torchrun_helpers import env, torchrun
from trustlab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trustlab.distributed import Distributed
from trustlab.models import build_model
from trustlab.runs import config_hash
from trustlab.training import TrainConfig, train_run
from trustlab.training.run import _batchnorm_across_ranks
from trustlab.training.sharded import check_sync_batchnorm, has_batchnorm, sync_batchnorm

ARCH = {"name": "preact-resnet18", "in_shape": [1, 8, 8], "num_classes": 10}
CPU_ERROR = r"sync_batchnorm on 2 processes needs a GPU: .* this run's device is 'cpu'"


def _resnet() -> nn.Module:
    return build_model(ARCH["name"], in_shape=tuple(ARCH["in_shape"]), num_classes=ARCH["num_classes"], seed=0)


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_the_cpu_with_several_processes_is_refused_by_name():
    with pytest.raises(ValueError, match=CPU_ERROR):
        check_sync_batchnorm(torch.device("cpu"), 2)
    check_sync_batchnorm(torch.device("cpu"), 1)  # one process: nothing to synchronize
    check_sync_batchnorm(torch.device("cuda", 1), 4)  # a device SyncBatchNorm syncs on (no GPU needed to check)


def test_conversion_keeps_parameters_and_plain_batchnorm_checkpoint_keys(tmp_path):
    model = _resnet()
    plain = model.state_dict()
    params = list(model.parameters())
    n_bn = len(_batchnorms(model))
    synced = sync_batchnorm(model, torch.device("cuda"), 2)  # the device only decides the check; nothing moves
    assert n_bn > 0 and [type(m) for m in _batchnorms(synced)] == [nn.SyncBatchNorm] * n_bn
    assert list(synced.parameters()) == params and all(a is b for a, b in zip(synced.parameters(), params))
    assert synced.state_dict().keys() == plain.keys()
    assert all(torch.equal(synced.state_dict()[k], v) for k, v in plain.items())
    save_checkpoint(tmp_path / "c", synced, arch=ARCH, dataset="digits", config={})
    loaded = load_checkpoint(tmp_path / "c", expected_arch=ARCH).model  # the registry's plain model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in loaded.modules()) and has_batchnorm(loaded)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in plain.items())


def test_one_process_is_left_as_it_is():
    model = _resnet()
    assert sync_batchnorm(model, torch.device("cpu"), 1) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_lib02_the_option_enters_config_and_identity_only_when_set():
    plain = TrainConfig()
    assert "sync_batchnorm" not in plain.to_dict() and "sync_batchnorm" not in plain.identity_dict()
    assert config_hash(TrainConfig(sync_batchnorm=False).identity_dict()) == config_hash(plain.identity_dict())
    synced = TrainConfig(sync_batchnorm=True)
    assert synced.to_dict()["sync_batchnorm"] is True and synced.identity_dict()["sync_batchnorm"] is True
    assert TrainConfig.from_dict(synced.to_dict()) == synced
    with pytest.raises(ValueError, match="sync_batchnorm must be true or false, got 'yes'"):
        TrainConfig(sync_batchnorm="yes")


def test_train_run_refuses_the_cpu_before_loading_anything(tmp_path):
    # a job of 2 without a process group: train_run must stop at the check, before any collective or data
    job = Distributed(rank=0, world_size=2)
    config = TrainConfig(model="preact-resnet18", sync_batchnorm=True, device="cpu", dataset="no-such-data")
    with pytest.raises(ValueError, match=CPU_ERROR):
        train_run(config, tmp_path / "r", progress=False, job=job)
    assert not (tmp_path / "r").exists()


def test_per_rank_statistics_are_warned_about_once_on_rank_0(caplog):
    config = TrainConfig(model="preact-resnet18", batch_size=100)
    with caplog.at_level(logging.WARNING, logger="trustlab.training.run"):
        _batchnorm_across_ranks(_resnet(), config, torch.device("cpu"), Distributed(rank=0, world_size=2))
        _batchnorm_across_ranks(_resnet(), config, torch.device("cpu"), Distributed(rank=1, world_size=2))
        _batchnorm_across_ranks(_resnet(), config, torch.device("cpu"), Distributed())
        _batchnorm_across_ranks(build_model("mlp", in_shape=(1, 8, 8), num_classes=10), config.replace(model="mlp"),
                                torch.device("cpu"), Distributed(rank=0, world_size=2))
    (record,) = caplog.records
    assert "each of the 2 processes normalizes with the statistics of its own 50 examples" in record.getMessage()


@pytest.mark.slow  # about 4 s: two one-epoch runs of PreAct ResNet-18 on the CPU
def test_one_process_with_the_option_is_the_run_without_it(tmp_path):
    tiny = dict(dataset="digits", model="preact-resnet18", epochs=1, subset=40, batch_size=20, device="cpu",
                eval_batch_size=100)
    train_run(TrainConfig(**tiny), tmp_path / "plain", progress=False)
    train_run(TrainConfig(**tiny, sync_batchnorm=True), tmp_path / "sync", progress=False)
    a, b = (load_file(str(latest_checkpoint(tmp_path / r) / "model.safetensors")) for r in ("plain", "sync"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "sync" / "config.json").read_text())["config"]["sync_batchnorm"] is True


@pytest.mark.slow  # about 6 s: torchrun starts 2 processes
def test_two_cpu_processes_fail_early_with_the_reason(tmp_path):
    done = subprocess.run(torchrun("train", "--dataset", "digits", "--model", "preact-resnet18", "--subset", "40",
                                   "--epochs", "1", "--device", "cpu", "--sync-batchnorm", "--out",
                                   str(tmp_path / "r")), env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    # each rank's one-line CLI error (the traceback after them is torchrun's own, reporting the failed rank)
    lines = [line for line in done.stderr.splitlines() if line.startswith("trustlab train: error: ")]
    assert len(lines) == 2 and all("needs a GPU" in line and "this run's device is 'cpu'" in line for line in lines)
    assert "batchnorm.py" not in done.stderr and not (tmp_path / "r").exists()  # not from SyncBatchNorm.forward


def test_data06_turning_the_option_on_is_a_new_identity_and_a_recorded_change_on_resume(tmp_path):
    tiny = TrainConfig(dataset="digits", model="mlp", epochs=1, subset=60, batch_size=30, device="cpu")
    run = tmp_path / "r"
    train_run(tiny, run, progress=False)
    (run / "summary.json").unlink()  # as if killed after the last checkpoint: a resume finishes the run
    with pytest.raises(ValueError, match=r"config differs from the run in .* in \['sync_batchnorm'\]"):
        train_run(tiny.replace(sync_batchnorm=True), run, resume=True, progress=False)
    train_run(tiny.replace(sync_batchnorm=True), run, resume=True, force_resume=True, progress=False)
    resumes = json.loads((run / "config.json").read_text())["resumes"]
    assert resumes == [{"epoch": 1, "changed": {"sync_batchnorm": [False, True]}}]
