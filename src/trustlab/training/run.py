"""``train_run``: a training run folder, checkpointed each epoch, resumable after a kill.

Layout of ``out``::

    config.json            resolved TrainConfig, config hash, data fingerprint, versions
    progress.jsonl         one line per finished epoch (appended)
    checkpoints/latest.json -> checkpoints/epoch_0003/{model.safetensors, state.pt, manifest.json}
    records.jsonl          one row per test example: idx, y, pred, correct, confidence
    summary.json           final accuracies, per-epoch history, training seconds

Resuming restarts the interrupted epoch from its start. Each epoch's shuffling and random starts come from
generators derived from ``(seed, epoch)``, and the optimizer and scheduler state are restored from the
checkpoint, so a killed-and-resumed run ends with weights identical to an uninterrupted one (DATA-04).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from trustlab.runs.atomic import append_jsonl
from trustlab.attacks import pgd
from trustlab.checkpoint import commit_checkpoint, latest_checkpoint, load_checkpoint
from trustlab.data import Splits, make_loader, make_splits
from trustlab.errors import CheckpointError
from trustlab.models import build_model
from trustlab.runs.records import read_json, versions, write_json, write_records
from trustlab.seeding import derive_generator, derive_seed
from trustlab.threat import LpBall
from trustlab.training.config import TrainConfig, config_hash
from trustlab.training.defenses import make_inner_max
from trustlab.training.loop import accuracy, predict_proba, train_epoch
from trustlab.training.optimizers import build_optimizer, build_scheduler

__all__ = ["train_run", "identity_of"]

log = logging.getLogger(__name__)
_TRAIN_EVAL_MAX = 10_000  # clean training accuracy is measured on a fixed subset of at most this many examples
_ROBUST_CHECK_N = 1000  # validation examples for the per-epoch PGD check of adversarially trained runs
_BEST_DIR = "best"  # <run>/best/checkpoints/: the best epoch so far (keep_best)
_FINAL = "final"  # the checkpoint holding the selected epoch's weights (keep_best)


def identity_of(config: TrainConfig, splits: Splits) -> dict[str, Any]:
    """What a resumed run must share with the original: every config field but the data root, and the data."""
    values = {k: v for k, v in config.to_dict().items() if k != "root"}
    return {"config_hash": config_hash(values), "data_fingerprint": splits.fingerprint}


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not out.is_dir():
            raise FileNotFoundError(f"can't find a valid checkpoint at {out}: the folder does not exist")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --resume to continue it or --overwrite")
        if not (out / "config.json").exists():
            raise FileExistsError(f"refusing to overwrite {out}: it is not a trustlab run folder (no config.json)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _check_identity(out: Path, identity: dict[str, Any], config: TrainConfig, *, force: bool) -> None:
    saved = read_json(out / "config.json")
    if saved.get("identity") == identity or force:
        return
    old, new = saved.get("config", {}), config.to_dict()
    defaults = TrainConfig().to_dict()
    # A field the saved config lacks was added later; the run was made with its default, so that is no change.
    diff = sorted(k for k in set(old) | set(new) if k != "root" and old.get(k) != new.get(k)
                  and not (k not in old and new.get(k) == defaults.get(k)))
    if saved.get("identity", {}).get("data_fingerprint") != identity["data_fingerprint"]:
        diff.append("data_fingerprint")
    if not diff:
        return
    raise ValueError(f"config differs from the run in {out} in {diff}; pass --force-resume to resume anyway")


def _evaluate(model, splits: Splits, config: TrainConfig) -> dict[str, float]:
    xt, yt = splits.train
    n = min(len(xt), _TRAIN_EVAL_MAX)
    idx = torch.randperm(len(xt), generator=derive_generator(config.seed, 7))[:n]
    bs = config.eval_batch_size
    stats = {"train_clean_acc": accuracy(model, xt[idx], yt[idx], batch_size=bs)}
    if len(splits.val[0]):
        stats["val_acc"] = accuracy(model, *splits.val, batch_size=bs)
    stats["test_acc"] = accuracy(model, *splits.test, batch_size=bs)
    stats["generalization_gap"] = stats["train_clean_acc"] - stats["test_acc"]
    return stats


def _robust_check(model, splits: Splits, threat: LpBall, config: TrainConfig, epoch: int) -> dict[str, float]:
    """PGD-10 accuracy at this epoch's training eps on the first 1000 validation examples (the catastrophic-
    overfitting check of Wong et al. 2020, Sec. 5.3): training accuracy on the inner attack far above it means
    the model has learned to fool that attack, not to resist the threat."""
    if config.defense == "none" or len(splits.val[0]) == 0:
        return {}
    x, y = splits.val[0][:_ROBUST_CHECK_N], splits.val[1][:_ROBUST_CHECK_N]
    x_adv = pgd(model, x, y, threat, steps=10, generator=derive_generator(config.seed, epoch, 2))
    return {"val_pgd_acc": accuracy(model, x_adv, y, batch_size=config.eval_batch_size)}


def _inner_at(config: TrainConfig, epoch: int) -> tuple[LpBall, float | None]:
    """This epoch's threat and inner step. During the warm-up eps ramps up linearly from 0, and a given
    ``pgd_step_size`` (the step at the full eps) shrinks with it, so the ratio step / eps the recipe chose holds at
    every epoch (a fixed step would be 4x eps in the first epoch of a 4-epoch ramp, which turns FGSM-RS into FGSM
    to a corner of the ball)."""
    ramp = 1.0 if config.eps_warmup_epochs == 0 else min(1.0, (epoch + 1) / config.eps_warmup_epochs)
    step = None if config.pgd_step_size is None else config.pgd_step_size * ramp
    return LpBall(config.eps * ramp, config.p), step


def _train_state(epoch: int, optimizer, scheduler, history: list, seconds: float) -> dict[str, Any]:
    """What a checkpoint needs besides the weights to resume after ``epoch``."""
    return {"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "train_seconds": seconds}


def train_run(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    force_resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train per ``config`` into the run folder ``out`` and return its summary.

    Raises:
        FileExistsError: ``out`` is not empty and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError, CheckpointError: ``resume`` without a valid checkpoint in ``out``.
        ValueError: resuming with a different config or dataset (unless ``force_resume``).
        NumericalError: the loss diverged (the last epoch's checkpoint is kept).
    """
    out = Path(out)
    splits = make_splits(
        config.dataset, root=config.root, val_size=config.val_size, seed=config.seed, subset=config.subset
    )
    info = splits.info
    identity = identity_of(config, splits)
    arch = {"name": config.model, "in_shape": list(info.shape), "num_classes": info.num_classes}
    model = build_model(config.model, in_shape=info.shape, num_classes=info.num_classes, seed=config.seed)
    _prepare_out(out, resume=resume, overwrite=overwrite)  # only once the data and the model are known good
    loader_gen = torch.Generator()
    loader = make_loader(*splits.train, batch_size=config.batch_size, shuffle=True, generator=loader_gen)
    optimizer = build_optimizer(
        config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(config.schedule, optimizer, total_steps=config.epochs * len(loader))

    start, history, seconds = 0, [], 0.0
    if resume:
        _check_identity(out, identity, config, force=force_resume)
        ckpt_dir = latest_checkpoint(out)
        if ckpt_dir is None:
            raise FileNotFoundError(f"no valid checkpoint found in {out}")
        ckpt = load_checkpoint(ckpt_dir, expected_arch=arch)
        summary_path = out / "summary.json"
        if ckpt.state["epoch"] == config.epochs and summary_path.exists():
            log.info("run in %s is already complete; nothing to do", out)
            return read_json(summary_path)
        model.load_state_dict(ckpt.model.state_dict())
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        start, history, seconds = ckpt.state["epoch"], list(ckpt.state["history"]), float(ckpt.state["train_seconds"])
        log.info("resuming %s at epoch %d (a partly done epoch restarts from its beginning)", out, start + 1)
        if config.keep_best and ckpt_dir.name != _FINAL:  # a kill between the epoch's commit and the best's
            _update_best(out, model, history, config, arch=arch, dataset=info.name)
    else:
        write_json(out / "config.json", {"config": config.to_dict(), "identity": identity, "versions": versions(),
                                         "dataset": {"name": info.name, "shape": list(info.shape),
                                                     "num_classes": info.num_classes,
                                                     "sizes": {k: len(getattr(splits, k)[0]) for k in ("train", "val", "test")}}})

    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        loader_gen.manual_seed(derive_seed(config.seed, epoch, 0))
        threat, step = _inner_at(config, epoch)
        inner = make_inner_max(config.defense, threat, pgd_steps=config.pgd_steps, pgd_step_size=step)
        result = train_epoch(
            model, loader, optimizer, scheduler, inner_max=inner, generator=derive_generator(config.seed, epoch, 1),
            desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress,
        )
        train_time = time.perf_counter() - t0
        seconds += train_time
        row = {"epoch": epoch + 1, "train_loss": result.loss, "train_acc": result.acc, "train_eps": threat.eps if inner else 0.0,
               "lr": scheduler.get_last_lr()[0], "epoch_seconds": train_time, **_evaluate(model, splits, config), **_robust_check(model, splits, threat, config, epoch)}
        history.append(row)
        commit_checkpoint(out, f"epoch_{epoch + 1:04d}", model, arch=arch, dataset=info.name,
                          config=config.to_dict(), state=_train_state(epoch + 1, optimizer, scheduler, history, seconds))
        if config.keep_best:
            _update_best(out, model, history, config, arch=arch, dataset=info.name)
        append_jsonl(out / "progress.jsonl", [row])
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
        if "val_pgd_acc" in row and row["train_acc"] - row["val_pgd_acc"] > 0.3:
            log.warning("epoch %d: training accuracy on the inner attack (%.3f) exceeds validation PGD accuracy "
                        "(%.3f) by > 30 points: catastrophic overfitting?", epoch + 1, row["train_acc"], row["val_pgd_acc"])

    selected = None
    if config.keep_best:
        state = _train_state(config.epochs, optimizer, scheduler, history, seconds)
        selected = _select_best(out, model, state, config, arch=arch, dataset=info.name)
    return _finish(out, model, splits, config, history, seconds, selected)


def _best_epoch(history: list[dict[str, Any]], config: TrainConfig) -> int | None:
    """The epoch with the highest validation PGD accuracy among those trained at the full eps (the later one on a
    tie), or ``None`` if no such epoch has a robustness check yet."""
    rows = [r for r in history if "val_pgd_acc" in r and r["train_eps"] >= config.eps * (1 - 1e-9)]
    if not rows:
        return None
    return max(rows, key=lambda r: (r["val_pgd_acc"], r["epoch"]))["epoch"]


def _update_best(out: Path, model, history: list, config: TrainConfig, *, arch: dict, dataset: str) -> None:
    """Keep a copy of the weights of the best epoch so far in ``<run>/best/`` (its own checkpoint folder, so the
    per-epoch pruning never removes it). ``model`` holds the weights of ``history[-1]``."""
    best = _best_epoch(history, config)
    if best is None or best != history[-1]["epoch"]:
        return
    name = f"epoch_{best:04d}"
    current = latest_checkpoint(out / _BEST_DIR)
    if current is not None and current.name == name:
        return
    commit_checkpoint(out / _BEST_DIR, name, model, arch=arch, dataset=dataset, config=config.to_dict(),
                      state={"epoch": best}, keep_last=1)


def _select_best(out: Path, model, state: dict[str, Any], config: TrainConfig, *, arch: dict,
                 dataset: str) -> int | None:
    """Early stopping (Wong et al. 2020, Sec. 5.3; Rice et al. 2020): load the best epoch's weights into ``model``
    and commit them as the run's final checkpoint, which ``trustlab attack`` then evaluates. On a resume after
    that commit, ``model`` was loaded from it already."""
    history = state["history"]
    best = _best_epoch(history, config)
    if best is None:
        log.warning("keep_best: no epoch was trained at the full eps with a validation PGD check; keeping the last")
        return None
    latest = latest_checkpoint(out)
    if latest is not None and latest.name == _FINAL:  # resumed after the selection was committed
        return best
    ckpt_dir = latest_checkpoint(out / _BEST_DIR)
    if ckpt_dir is None or ckpt_dir.name != f"epoch_{best:04d}":
        raise CheckpointError(f"keep_best: the weights of epoch {best} are missing from {out / _BEST_DIR}")
    model.load_state_dict(load_checkpoint(ckpt_dir, expected_arch=arch).model.state_dict())
    commit_checkpoint(out, _FINAL, model, arch=arch, dataset=dataset, config=config.to_dict(),
                      state={**state, "selected_epoch": best})
    log.info("keep_best: the run ends with the weights of epoch %d (validation PGD accuracy %.3f)", best,
             next(r["val_pgd_acc"] for r in history if r["epoch"] == best))
    return best


def _finish(out: Path, model, splits: Splits, config: TrainConfig, history: list, seconds: float,
            selected: int | None = None) -> dict[str, Any]:
    x, y = splits.test
    probs = predict_proba(model, x, batch_size=config.eval_batch_size)
    conf, pred = probs.max(1)
    records = [
        {"idx": i, "y": int(y[i]), "pred": int(pred[i]), "correct": bool(pred[i] == y[i]), "confidence": float(conf[i])}
        for i in range(len(y))
    ]
    write_records(out / "records.jsonl", records)
    last = history[-1] if history else {}
    if selected is not None:
        last = next(r for r in history if r["epoch"] == selected)
    summary = {
        "complete": True,
        "n_test": len(y),
        "test_acc": sum(r["correct"] for r in records) / len(records),
        "val_acc": last.get("val_acc"),
        "train_clean_acc": last.get("train_clean_acc"),
        "generalization_gap": last.get("generalization_gap"),
        "train_seconds": seconds,
        "epochs": config.epochs,
        "selected_epoch": last.get("epoch"),
        "history": history,
    }
    write_json(out / "summary.json", summary)
    return summary
