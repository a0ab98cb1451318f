"""The defense registry: one shape for every training objective, its settings, TRADES, and the data step."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trustlab.data import make_loader, make_splits
from trustlab.data.transform import TransformedSet
from trustlab.models import build_model
from trustlab.runs import RunWriter
from trustlab.threat import LpBall
from trustlab.training import DEFENSES, Defense, TrainConfig, build_defense, register_defense, resolve_train_config
from trustlab.training import train_run
from trustlab.training.defenses.trades import trades_inner_max

TINY = dict(dataset="digits", model="mlp", epochs=2, subset=120, batch_size=40, eps=0.1, seed=0)


def test_a_defense_is_one_class_and_one_registration(tmp_path):
    """A new defense needs no edit to the loop: register it, name it in a config, and a run trains on its loss and
    keep_best selects on its own validation metric."""

    @register_defense
    @dataclass(frozen=True)
    class Smoothed(Defense):  # noise augmentation with a validation metric of its own
        name = "test-noise"
        sigma: float = 0.1
        selection_metric = "val_noise_acc"

        def loss(self, model, x, y, *, threat, generator):
            noisy = (x + self.sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
            logits = model(noisy)
            return F.cross_entropy(logits, y), logits

        def validate(self, model, x, y, *, threat, generator, batch_size):
            return {"val_noise_acc": float(model(x).argmax(1).eq(y).float().mean())}

    try:
        config = TrainConfig.from_dict({**TINY, "defense": "test-noise", "test_noise_sigma": 0.2, "keep_best": True})
        assert config.defense == Smoothed(sigma=0.2)
        summary = train_run(config, tmp_path / "r", progress=False)
        assert all("val_noise_acc" in row and "val_pgd_acc" not in row for row in summary["history"])
        saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]["defense"]
        assert saved == {"name": "test-noise", "sigma": 0.2}
        best = max(summary["history"], key=lambda r: (r["val_noise_acc"], r["epoch"]))["epoch"]
        assert summary["selected_epoch"] == best
    finally:
        del DEFENSES["test-noise"]


def test_register_defense_refuses_a_taken_name():
    @dataclass(frozen=True)
    class Other(Defense):
        name = "pgd"

    with pytest.raises(ValueError, match="defense name 'pgd' is already registered by PGDTraining"):
        register_defense(Other)


def test_defense_settings_as_table_prefixed_keys_or_object_are_one_config():
    table = TrainConfig.from_dict({"defense": {"name": "pgd", "steps": 7, "step_size": 0.02}})
    prefixed = TrainConfig.from_dict({"defense": "pgd", "pgd_steps": 7, "pgd_step_size": 0.02})
    direct = TrainConfig(defense=build_defense("pgd", steps=7, step_size=0.02))
    assert table == prefixed == direct
    assert table.to_dict()["defense"] == {"name": "pgd", "steps": 7, "step_size": 0.02}
    assert TrainConfig.from_dict(table.to_dict()) == table  # config.json round-trips


@pytest.mark.parametrize("values, match", [
    ({"defense": "fgsm", "pgd_steps": 7}, r"config keys \['pgd_steps'\] set options of defense\(s\) \['pgd'\], but "
                                           r"the defense is 'fgsm'"),
    ({"defense": "pgd", "pgd_beta": 1.0}, r"unknown config keys \['pgd_beta'\]"),
    ({"defense": {"name": "trades", "gamma": 1}}, r"unknown option\(s\) \['gamma'\] for defense 'trades'"),
    ({"defense": {"steps": 3}}, "a defense table needs a name"),
    ({"defense": "trades", "trades_beta": -1.0}, "beta must be finite and >= 0, got -1.0"),
    ({"defense": "pgd", "pgd_steps": 0}, "steps must be >= 1 for PGD training, got 0"),
])
def test_inp19_bad_defense_settings_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


def test_fgsm_rs_option_is_not_confused_with_fgsm():
    """``fgsm_rs_step_size`` starts with ``fgsm_``: the longest prefix decides whose option it is."""
    assert TrainConfig.from_dict({"defense": "fgsm-rs", "fgsm_rs_step_size": 0.25}).defense.step_size == 0.25


def test_saved_configs_of_older_runs_still_read():
    """Runs written before defenses had settings stored flat ``pgd_steps``/``pgd_step_size`` (the latter also the
    FGSM-RS step); they must still resume and be reused."""
    pgd = TrainConfig.from_saved({"defense": "pgd", "pgd_steps": 7, "pgd_step_size": None, "eps": 0.3})
    assert pgd.defense == build_defense("pgd", steps=7)
    rs = TrainConfig.from_saved({"defense": "fgsm-rs", "pgd_steps": 10, "pgd_step_size": 0.25})
    assert rs.defense == build_defense("fgsm-rs", step_size=0.25)
    assert TrainConfig.from_saved({"defense": "none", "pgd_steps": 10, "pgd_step_size": None}).defense.name == "none"


def test_resume_merges_overrides_onto_the_saved_config(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    saved = TrainConfig.from_dict({**TINY, "defense": "pgd", "pgd_steps": 3})
    (run / "config.json").write_text(json.dumps({"config": saved.to_dict()}))
    assert resolve_train_config(run, {"epochs": 4}, resume=True) == saved.replace(epochs=4)
    assert resolve_train_config(run, {"pgd_steps": 5}, resume=True).defense.steps == 5
    switched = resolve_train_config(run, {"defense": "fgsm"}, resume=True)  # the old defense's options go
    assert switched.defense == build_defense("fgsm") and switched.epochs == saved.epochs
    assert resolve_train_config(run, {"epochs": 4}, resume=False) == TrainConfig(epochs=4)


def _two_layer():
    torch.manual_seed(0)  # only this test's own weights; attacks and losses take generators
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def test_trades_loss_is_clean_ce_plus_beta_kl_at_the_inner_max():
    """Zhang et al. 2019, eq. 5: the loss is CE(f(x), y) + beta * KL(f(x) || f(x_adv)), with x_adv the inner
    maximizer of the KL found from the same random stream; beta = 0 is plain ERM."""
    model = _two_layer()
    x, y = make_splits("digits", seed=0, subset=64).train
    threat = LpBall(0.2)
    trades = build_defense("trades", beta=6.0, steps=5)
    loss, logits_adv = trades.objective(threat)(model, x, y, generator=torch.Generator().manual_seed(1))
    x_adv = trades_inner_max(model, x, threat, steps=5, step_size=2.5 * 0.2 / 5, generator=torch.Generator().manual_seed(1))
    assert bool(threat.contains(x_adv, x).all())
    logits = model(x)
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(logits, 1), reduction="batchmean")
    assert torch.allclose(loss, F.cross_entropy(logits, y) + 6.0 * kl)
    assert torch.allclose(logits_adv, model(x_adv))
    erm, _ = build_defense("trades", beta=0.0).objective(threat)(model, x, y, generator=torch.Generator())
    assert torch.allclose(erm, F.cross_entropy(logits, y))


def test_trades_inner_max_raises_the_kl_above_random_noise():
    model = _two_layer().eval()
    x, _ = make_splits("digits", seed=0, subset=64).train
    threat = LpBall(0.1)
    with torch.no_grad():
        p = F.softmax(model(x), 1)

    def kl(z):
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(model(z), 1), p, reduction="batchmean"))

    noise = threat.random_init(x, generator=torch.Generator().manual_seed(0))
    x_adv = trades_inner_max(model, x, threat, steps=10, step_size=0.025, generator=torch.Generator().manual_seed(0))
    assert kl(x_adv) > 5 * kl(noise)


def test_trades_trains_and_records_its_settings(tmp_path):
    config = TrainConfig.from_dict({**TINY, "defense": {"name": "trades", "beta": 1.0, "steps": 2}})
    summary = train_run(config, tmp_path / "r", progress=False)
    assert all("val_pgd_acc" in row for row in summary["history"])
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["defense"] == {"name": "trades", "beta": 1.0, "steps": 2, "step_size": None}


@dataclass(frozen=True)
class _AddMirrored:
    """A training-set transformation: append the first ``k`` images mirrored left-right with label 0."""

    k: int = 5
    name: str = "mirror"

    def __call__(self, x, y, *, generator):
        extra = x[: self.k].flip(-1)
        added = torch.arange(len(x), len(x) + self.k)
        return TransformedSet(torch.cat([x, extra]), torch.cat([y, torch.zeros(self.k, dtype=y.dtype)]), added=added,
                              info={"target": 0})

    def to_dict(self):
        return {"name": self.name, "k": self.k}


def test_training_set_transform_is_recorded_and_part_of_the_identity(tmp_path):
    run = tmp_path / "r"
    config = TrainConfig(**TINY)
    train_run(config, run, transform=_AddMirrored(), progress=False)
    record = json.loads((run / "data_transform.json").read_text())
    n = make_splits("digits", seed=0, subset=120).train[0].shape[0]
    assert record["added"] == list(range(n, n + 5)) and record["n_train"] == n + 5
    assert json.loads((run / "config.json").read_text())["data_transform"] == {"name": "mirror", "k": 5}
    with pytest.raises(ValueError, match=r"config differs from the run in .* in \['data_fingerprint'\]"):
        train_run(config, run, resume=True, progress=False)  # the transform was left out
    with pytest.raises(ValueError, match=r"in \['data_fingerprint'\]"):
        train_run(config, run, resume=True, transform=_AddMirrored(k=4), progress=False)
    assert train_run(config, run, resume=True, transform=_AddMirrored(), progress=False)["complete"]


def test_loader_yields_indices_and_takes_a_sampler():
    x, y = torch.rand(10, 1, 2, 2), torch.arange(10)
    loader = make_loader(x, y, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0),
                         with_indices=True)
    seen = torch.cat([idx for xb, yb, idx in loader])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(xb, x[idx]) for xb, _, idx in loader)
    ordered = make_loader(x, y, batch_size=3, shuffle=False, sampler=list(range(9, -1, -1)))
    assert torch.cat([yb for _, yb in ordered]).tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="either shuffle=True or a sampler"):
        make_loader(x, y, batch_size=3, shuffle=True, generator=torch.Generator(), sampler=[0])


def test_a_disabled_writer_trains_without_writing(tmp_path):
    """A non-zero rank of a distributed run computes the same and writes nothing."""
    out = tmp_path / "rank1"
    summary = train_run(TrainConfig(**TINY), out, writer=RunWriter(out, enabled=False), progress=False)
    assert not out.exists()
    reference = train_run(TrainConfig(**TINY), tmp_path / "rank0", progress=False)
    assert summary["test_acc"] == reference["test_acc"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="device 'cuda' asked for, but torch .* sees no CUDA device"):
        train_run(TrainConfig(**TINY, device="cuda"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_config_json_records_the_device(tmp_path):
    train_run(TrainConfig(**TINY, device="cpu"), tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["config"]["device"] == "cpu"
    assert saved["runtime"] == {"device": "cpu", "dtype": "float32",
                                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def test_a_defense_metric_reaches_the_report_from_the_records(tmp_path):
    """The report's training table shows a defense's own validation metric, read from summary.json alone."""
    from trustlab.reports.report import build_report

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"idx": i, "y": i % 10, "pred": i % 10, "correct": True} for i in range(20)]
    (run / "config.json").write_text(json.dumps({"config": TrainConfig().to_dict(), "dataset": {"name": "digits"}}))
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_noise_acc": 0.1 * e, "test_acc": 0.9}
               for e in (1, 2)]
    (run / "summary.json").write_text(json.dumps({"history": history}))
    md = build_report([run], tmp_path / "rep").with_suffix(".md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| epoch"))
    assert [c.strip().replace("\\_", "_") for c in header.split("|")[1:-1]] == [
        "epoch", "train_loss", "train_acc", "val_noise_acc", "test_acc"]
    assert "| 20.0% |" in md  # 0.2 shown as a percentage
