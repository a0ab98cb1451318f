"""``train_run``: a training run folder, checkpointed each epoch, resumable after a kill.

Layout of ``out``::

    config.json            resolved TrainConfig, config hash, data fingerprint, runtime (device), versions
    data_transform.json    what a training-set transformation added or replaced (only when one was given)
    progress.jsonl         one line per finished epoch (appended)
    checkpoints/latest.json -> checkpoints/epoch_0003/{model.safetensors, state.pt, manifest.json}
    records.jsonl          one row per test example: idx, y, pred, correct, confidence
    summary.json           final accuracies, per-epoch history, training seconds

Resuming restarts the interrupted epoch from its start. Each epoch's shuffling and random starts come from
generators derived from ``(seed, epoch)``, and the optimizer and scheduler state are restored from the
checkpoint, so a killed-and-resumed run ends with weights identical to an uninterrupted one (DATA-04).
Every write goes through one :class:`~trustlab.runs.RunWriter`, which a distributed run enables on rank 0 only.

Under torchrun (``job``, a :class:`~trustlab.distributed.Distributed` with more than one process) every rank
builds the same model and splits, loads the same checkpoint when resuming, and trains on its slice of each global
batch (:mod:`trustlab.training.sharded`) through DistributedDataParallel; rank 0 alone writes the folder, and
every rank returns rank 0's summary. One process (``job`` :data:`~trustlab.distributed.SINGLE`) runs the
single-process path unchanged.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

from trustlab.attacks import clean_accuracy, predict_proba
from trustlab.checkpoint import checkpoint_ref, commit_checkpoint, latest_checkpoint, load_checkpoint
from trustlab.compute import Compute, check_compute, prepare
from trustlab.data import Splits, make_loader, make_splits
from trustlab.data.loader import place_training_set
from trustlab.data.transform import TrainingSetTransform, apply_transform
from trustlab.device import resolve_device, runtime_info
from trustlab.distributed import SINGLE, Distributed
from trustlab.errors import CheckpointError
from trustlab.models import build_model
from trustlab.runs import RunWriter, config_hash, read_json, versions
from trustlab.runs.folder import (LOCK, MARKER, check_overwritable, is_run, read_marker, replace_run, run_lock,
                                    staging_folder, write_marker)
from trustlab.seeding import derive_generator, derive_seed
from trustlab.threat import LpBall
from trustlab.training.config import ONLY_WHEN_SET, TrainConfig, migrate_legacy
from trustlab.training.defenses import Defense, Objective, option_prefix
from trustlab.training.loop import train_epoch
from trustlab.training.optimizers import build_optimizer, build_scheduler
from trustlab.training.sharded import (ShardedBatches, check_sync_batchnorm, data_parallel, has_batchnorm,
                                       sync_batchnorm)
from trustlab.training.state import check_train_state, train_state

__all__ = ["train_run", "identity_of", "resolve_train_config"]

log = logging.getLogger(__name__)
_TRAIN_EVAL_MAX = 10_000  # clean training accuracy is measured on a fixed subset of at most this many examples
_VAL_CHECK_N = 1000  # validation examples for the defense's per-epoch check (PGD-10 for adversarial training)
_BEST_DIR = "best"  # <run>/best/checkpoints/: the best epoch so far (keep_best)
_FINAL = "final"  # the checkpoint holding the selected epoch's weights (keep_best)
_TRANSFORM_SEED_KEY = 13  # the stream of a training-set transformation: derive_generator(seed, 13)
_INIT_SEED_KEY = 17  # the stream of a defense's re-initialization of a new run's weights (Defense.initialize)


def identity_of(config: TrainConfig, splits: Splits) -> dict[str, Any]:
    """What a resumed run must share with the original: every config field but the data root and the device,
    and the data (after any training-set transformation)."""
    return {"config_hash": config_hash(config.identity_dict()), "data_fingerprint": splits.fingerprint}


def resolve_train_config(out: Path, options: Mapping[str, Any], *, resume: bool) -> TrainConfig:
    """The configuration of ``trustlab train``: ``options`` (a recipe's values under the flags given), on top of
    the run's own saved configuration when resuming.

    A saved defense table is flattened into prefixed keys first, so ``pgd_steps = 20`` overrides the saved
    steps, and naming another defense drops the saved defense's options.

    Raises:
        ValueError: unknown keys or invalid values (see :meth:`TrainConfig.from_dict`).
    """
    saved = Path(out) / "config.json"
    base: dict[str, Any] = {}
    if resume and saved.is_file():
        base = _flatten_defense(migrate_legacy(dict(read_json(saved).get("config", {}))))
    options = _flatten_defense(dict(options))
    if "defense" in options and options["defense"] != base.get("defense"):
        old = option_prefix(str(base.get("defense", "none")))
        base = {k: v for k, v in base.items() if not k.startswith(old)}
    return TrainConfig.from_dict({**base, **options})


def _flatten_defense(values: dict[str, Any]) -> dict[str, Any]:
    spec = values.get("defense")
    if isinstance(spec, Defense):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        return values
    spec = dict(spec)
    name = spec.pop("name", "none")
    # keys already prefixed (a flag such as --trades-beta) win over the table's
    return {**{option_prefix(name) + k: v for k, v in spec.items()}, **values, "defense": name}


def _open_out(out: Path, *, resume: bool, overwrite: bool, writer: RunWriter, stack: ExitStack) -> Path:
    """Lock the run folder ``out`` for this process (until ``stack`` closes) and return the folder to train into:
    ``out`` itself, or for an overwrite a hidden sibling that :func:`replace_run` swaps in once the new run is
    complete, so a failing or killed new run leaves the old one intact."""
    if resume:
        if not out.is_dir():
            raise FileNotFoundError(f"can't find a valid checkpoint at {out}: the folder does not exist")
        if not is_run(out):
            raise FileNotFoundError(f"can't find a valid checkpoint at {out}: it is not a trustlab run folder "
                                    f"(no {MARKER})")
        if writer.enabled:
            stack.enter_context(run_lock(out))
        return out
    if not writer.enabled:  # another rank writes the folder
        return out
    if out.exists() and any(e.name != LOCK for e in out.iterdir()):
        if is_run(out):  # a second writer learns which process holds the run
            stack.enter_context(run_lock(out))
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --resume to continue it or --overwrite")
        check_overwritable(out)
        staged = staging_folder(out)
        stack.enter_context(run_lock(staged))
        write_marker(staged)
        return staged
    out.mkdir(parents=True, exist_ok=True)
    stack.enter_context(run_lock(out))
    if any(e.name != LOCK for e in out.iterdir()):  # another process created the run first
        raise FileExistsError(f"{out} exists and is not empty; pass --resume to continue it or --overwrite")
    write_marker(out)
    return out


def _check_identity(out: Path, identity: dict[str, Any], config: TrainConfig, *, force: bool) -> None:
    saved = read_json(out / "config.json")
    if saved.get("identity") == identity or force:
        return
    try:
        old = TrainConfig.from_saved(dict(saved.get("config", {}))).identity_dict()
    except (TypeError, ValueError) as e:
        raise ValueError(f"the saved config of {out} cannot be read ({e}); pass --force-resume to resume anyway") from None
    new = config.identity_dict()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if saved.get("identity", {}).get("data_fingerprint") != identity["data_fingerprint"]:
        diff.append("data_fingerprint")
    if diff:
        raise ValueError(f"config differs from the run in {out} in {diff}; pass --force-resume to resume anyway")


def _evaluate(model, splits: Splits, config: TrainConfig, device: torch.device) -> dict[str, float]:
    xt, yt = splits.train
    n = min(len(xt), _TRAIN_EVAL_MAX)
    idx = torch.randperm(len(xt), generator=derive_generator(config.seed, 7))[:n]
    bs = config.eval_batch_size
    stats = {"train_clean_acc": clean_accuracy(model, xt[idx].to(device), yt[idx].to(device), batch_size=bs)}
    if len(splits.val[0]):
        stats["val_acc"] = clean_accuracy(model, *(t.to(device) for t in splits.val), batch_size=bs)
    stats["test_acc"] = clean_accuracy(model, *(t.to(device) for t in splits.test), batch_size=bs)
    stats["generalization_gap"] = stats["train_clean_acc"] - stats["test_acc"]
    return stats


def _validate(model, splits: Splits, threat: LpBall, config: TrainConfig, epoch: int,
              device: torch.device) -> dict[str, float]:
    """The defense's own per-epoch check on the first 1000 validation examples (PGD-10 at this epoch's eps for
    adversarial training); nothing when there is no validation set."""
    if len(splits.val[0]) == 0:
        return {}
    x, y = (t[:_VAL_CHECK_N].to(device) for t in splits.val)
    return config.defense.validate(model, x, y, threat=threat, batch_size=config.eval_batch_size,
                                   generator=derive_generator(config.seed, epoch, 2, device=device))


def _defense_at(config: TrainConfig, epoch: int, fraction: float = 1.0) -> tuple[LpBall, Defense]:
    """The threat and defense of ``epoch`` once ``fraction`` of it is done. During the warm-up eps ramps up
    linearly from 0, and a step size given for the full eps shrinks with it (a fixed step would be 4x eps in the
    first epoch of a 4-epoch ramp, which turns FGSM-RS into FGSM to a corner of the ball). The ramp is a
    staircase of epochs, ``(epoch + 1) / W``, unless the defense ramps per step (``ramp_per_step``):
    then it is ``(epoch + fraction) / W``, the same value at the end of each epoch."""
    done = epoch + fraction if config.defense.ramp_per_step else epoch + 1
    ramp = 1.0 if config.eps_warmup_epochs == 0 else min(1.0, done / config.eps_warmup_epochs)
    return LpBall(config.eps * ramp, config.p), config.defense.scaled(ramp)


def _objective_at(config: TrainConfig, epoch: int) -> Objective | Callable[[float], Objective]:
    """What :func:`train_epoch` descends on in ``epoch``: the epoch's objective, or a per-batch one while a
    defense that ramps per step is in its warm-up."""
    if not config.defense.ramp_per_step or epoch + 1 > config.eps_warmup_epochs:
        threat, defense = _defense_at(config, epoch)
        return defense.objective(threat)

    def at(fraction: float) -> Objective:
        threat, defense = _defense_at(config, epoch, fraction)
        return defense.objective(threat)

    return at


def train_run(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    force_resume: bool = False,
    progress: bool = True,
    transform: TrainingSetTransform | None = None,
    sampler: Sampler | None = None,
    writer: RunWriter | None = None,
    job: Distributed = SINGLE,
) -> dict[str, Any]:
    """Train per ``config`` into the run folder ``out`` and return its summary.

    Args:
        transform: a data step applied to the training set before batching (its stream is
            ``derive_generator(seed, 13)``); what it added or replaced is written to ``data_transform.json``.
        sampler: the training loader's order instead of the seeded shuffle (e.g. a ``DistributedSampler``; its
            ``set_epoch`` is called each epoch).
        writer: where files go; a disabled writer (a non-zero rank) trains without writing. Default: a writer
            enabled on rank 0 of ``job`` only.
        job: the distributed job this process belongs to (:func:`trustlab.distributed.init_distributed`);
            with more than one process, each trains on its slice of every global batch of ``batch_size``
            (which the world size must divide) and ``sampler`` must be ``None``.

    Raises:
        FileExistsError: ``out`` is not empty and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError, CheckpointError: ``resume`` without a valid checkpoint in ``out``.
        ValueError: resuming with a different config or dataset (unless ``force_resume``), or a device that does
            not exist here.
        NumericalError: the loss diverged (the last epoch's checkpoint is kept).
    """
    out = Path(out)
    writer = writer or RunWriter(out, enabled=job.is_main)
    if job.enabled and sampler is not None:
        raise ValueError("a distributed run shards the global batches itself; give no sampler")
    if job.enabled and config.batch_size % job.world_size:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes "
                         f"({job.world_size}): each rank trains on batch_size / {job.world_size} examples of a batch")
    device = job.device(resolve_device(config.device))
    check_compute(config.compute, device)  # before the data is loaded
    if config.sync_batchnorm:
        check_sync_batchnorm(device, job.world_size)
    splits = make_splits(
        config.dataset, root=config.root, val_size=config.val_size, seed=config.seed, subset=config.subset
    )
    transform_record = None
    if transform is not None:
        splits, transform_record = apply_transform(splits, transform,
                                                   generator=derive_generator(config.seed, _TRANSFORM_SEED_KEY))
    info = splits.info
    identity = identity_of(config, splits)
    model = build_model(config.model, in_shape=info.shape, num_classes=info.num_classes, seed=config.seed).to(device)
    model = _batchnorm_across_ranks(model, config, device, job)
    with ExitStack() as stack:  # the run folder stays locked until the run is committed
        folder = _open_out(out, resume=resume, overwrite=overwrite, writer=writer, stack=stack)
        if folder != out:
            writer = RunWriter(folder, enabled=writer.enabled)
        summary = _train_in(folder, config, model, splits, device=device, identity=identity,
                            transform_record=transform_record, resume=resume, force_resume=force_resume,
                            progress=progress and job.is_main, sampler=sampler, writer=writer, job=job)
        if folder != out:
            writer.call(replace_run, out, folder)
    return job.broadcast_object(summary)


def _batchnorm_across_ranks(model, config: TrainConfig, device: torch.device, job: Distributed):
    """``model`` with SyncBatchNorm where ``config`` asks for it and there are several processes; else ``model``,
    with a warning (rank 0, once per run) when its BatchNorm layers will see per-rank statistics."""
    if config.sync_batchnorm:
        return sync_batchnorm(model, device, job.world_size)
    if job.enabled and job.is_main and has_batchnorm(model):
        log.warning("%s has BatchNorm layers: each of the %d processes normalizes with the statistics of its own "
                    "%d examples of a batch, so this run differs from a one-process run (on a GPU, "
                    "--sync-batchnorm uses the global batch's)", config.model, job.world_size,
                    config.batch_size // job.world_size)
    return model


def _train_in(out: Path, config: TrainConfig, model, splits: Splits, *, device: torch.device,
              identity: dict[str, Any], transform_record: dict[str, Any] | None, resume: bool, force_resume: bool,
              progress: bool, sampler: Sampler | None, writer: RunWriter,
              job: Distributed = SINGLE) -> dict[str, Any]:
    """The body of :func:`train_run` in the locked folder ``out``."""
    info = splits.info
    arch = {"name": config.model, "in_shape": list(info.shape), "num_classes": info.num_classes}
    loader_gen = torch.Generator()
    train_x, train_y, pin = place_training_set(*splits.train, device)  # on the GPU where it fits there
    if job.enabled:
        loader = sampler = ShardedBatches(train_x, train_y, batch_size=config.batch_size, seed=config.seed, job=job)
    else:
        loader = make_loader(train_x, train_y, batch_size=config.batch_size, shuffle=sampler is None,
                             generator=loader_gen if sampler is None else None, sampler=sampler, pin_memory=pin)
    optimizer = build_optimizer(
        config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(config.schedule, optimizer, total_steps=config.epochs * len(loader))
    ckpt_args = {"arch": arch, "dataset": info.name, "config": config.to_dict()}

    start, history, seconds = 0, [], 0.0
    ckpt_dir = None
    if resume:
        if (out / "config.json").exists():
            _check_identity(out, identity, config, force=force_resume)
        ckpt_dir = latest_checkpoint(out)
        if ckpt_dir is None and read_marker(out) is None:  # a legacy run always had a checkpoint
            raise FileNotFoundError(f"no valid checkpoint found in {out}")
    if ckpt_dir is not None:
        ckpt = load_checkpoint(ckpt_dir, expected_arch=arch, map_location=device)
        state = check_train_state(ckpt.state, ckpt_dir, epochs=config.epochs)
        summary_path = out / "summary.json"
        if state["epoch"] == config.epochs and summary_path.exists():
            log.info("run in %s is already complete; nothing to do", out)
            return read_json(summary_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_dir / 'state.pt'} has an optimizer or scheduler state that does not "
                                  f"fit this run: {type(exc).__name__}: {exc}") from exc
        model.load_state_dict(ckpt.model.state_dict())
        start, history, seconds = state["epoch"], list(state["history"]), float(state["train_seconds"])
        log.info("resuming %s at epoch %d (a partly done epoch restarts from its beginning)", out, start + 1)
        writer.records("progress.jsonl", history)  # the committed epochs, also one killed before its row
        _record_resume(out, config, identity, start, writer)
        if config.keep_best and ckpt_dir.name != _FINAL:  # a kill between the epoch's commit and the best's
            _update_best(out, model, history, config, ckpt_args, writer)
    else:  # a new run, or one killed before its first checkpoint: start from scratch
        if resume:
            log.info("%s has no checkpoint yet; starting it from scratch", out)
            for stale in ("progress.jsonl", "records.jsonl", "summary.json", "best"):
                if (out / stale).exists():
                    writer.call(_remove, out / stale)
        sizes = {k: len(getattr(splits, k)[0]) for k in ("train", "val", "test")}
        writer.json("config.json", {
            "config": config.to_dict(), "identity": identity,
            "runtime": {**runtime_info(device), **({"processes": job.world_size} if job.enabled else {})},
            "versions": versions(),
            "dataset": {"name": info.name, "shape": list(info.shape), "num_classes": info.num_classes, "sizes": sizes},
            **({"data_transform": transform_record["transform"]} if transform_record else {})})
        if transform_record is not None:
            writer.json("data_transform.json", transform_record)
        config.defense.initialize(model, generator=derive_generator(config.seed, _INIT_SEED_KEY))

    # wrapped after loading or initializing the weights (DDP broadcasts rank 0's); checkpoints keep ``model``.
    # ``run_model`` computes every forward pass of the run, checks included, under the config's precision,
    # memory format and compilation (``model`` itself with the defaults)
    run_model = prepare(model, config.compute, device)
    trained = data_parallel(run_model, device) if job.enabled else run_model
    for epoch in range(start, config.epochs):
        t0 = time.perf_counter()
        loader_gen.manual_seed(derive_seed(config.seed, epoch, 0))
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        threat, defense = _defense_at(config, epoch)
        result = train_epoch(
            trained, loader, optimizer, scheduler, objective=_objective_at(config, epoch), device=device,
            generator=derive_generator(config.seed, epoch, 1, device=device),
            desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress, job=job,
        )
        train_time = time.perf_counter() - t0
        seconds += train_time
        row = {"epoch": epoch + 1, "train_loss": result.loss, "train_acc": result.acc,
               "train_eps": threat.eps if defense.adversarial else 0.0, "lr": scheduler.get_last_lr()[0],
               "epoch_seconds": train_time, **_evaluate(run_model, splits, config, device),
               **_validate(run_model, splits, threat, config, epoch, device)}
        history.append(row)
        writer.call(commit_checkpoint, out, f"epoch_{epoch + 1:04d}", model, **ckpt_args,
                    state=train_state(epoch + 1, optimizer, scheduler, history, seconds))
        if config.keep_best:
            _update_best(out, model, history, config, ckpt_args, writer)
        writer.records("progress.jsonl", history)  # rewritten whole: it always equals the committed history
        log.info("epoch %d/%d: %s", epoch + 1, config.epochs,
                 {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
        if "val_pgd_acc" in row and row["train_acc"] - row["val_pgd_acc"] > 0.3:
            log.warning("epoch %d: training accuracy on the inner attack (%.3f) exceeds validation PGD accuracy "
                        "(%.3f) by > 30 points: catastrophic overfitting?", epoch + 1, row["train_acc"], row["val_pgd_acc"])

    selected = None
    if config.keep_best:
        state = train_state(config.epochs, optimizer, scheduler, history, seconds)
        selected = _select_best(out, model, state, config, ckpt_args, writer, device)
    return _finish(out, run_model, splits, config, history, seconds, writer, device, selected)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _record_resume(out: Path, config: TrainConfig, identity: dict[str, Any], epoch: int, writer: RunWriter) -> None:
    """Keep ``config.json`` true to what the run does: a resume with another config (``--force-resume``, or a
    new device or data root) writes the new config and identity, and lists what changed at which epoch."""
    saved = read_json(out / "config.json")
    # a run from before the compute settings existed computed with their defaults
    # and one without the options written only when set (ONLY_WHEN_SET) left them at their defaults
    defaults = {**Compute().to_dict(), **{k: False for k in ONLY_WHEN_SET}}
    old, new = {**defaults, **saved.get("config", {})}, {**defaults, **config.to_dict()}
    if old == new and saved.get("identity") == identity:
        return
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    resumes = list(saved.get("resumes", [])) + [{"epoch": epoch, "changed": changed}]
    writer.json("config.json", {**saved, "config": new, "identity": identity, "resumes": resumes})


def _best_epoch(history: list[dict[str, Any]], config: TrainConfig) -> int | None:
    """The epoch with the highest value of the defense's selection metric among those trained at the full eps
    (the later one on a tie), or ``None`` if no such epoch has that metric yet."""
    metric = config.defense.selection_metric
    rows = [r for r in history if metric in r and r["train_eps"] >= config.eps * (1 - 1e-9)]
    if not rows:
        return None
    return max(rows, key=lambda r: (r[metric], r["epoch"]))["epoch"]


def _update_best(out: Path, model, history: list, config: TrainConfig, ckpt_args: dict, writer: RunWriter) -> None:
    """Keep a copy of the weights of the best epoch so far in ``<run>/best/`` (its own checkpoint folder, so the
    per-epoch pruning never removes it). ``model`` holds the weights of ``history[-1]``."""
    best = _best_epoch(history, config)
    if best is None or best != history[-1]["epoch"]:
        return
    name = f"epoch_{best:04d}"
    current = latest_checkpoint(out / _BEST_DIR)
    if current is not None and current.name == name:
        return
    writer.call(commit_checkpoint, out / _BEST_DIR, name, model, **ckpt_args, state={"epoch": best}, keep_last=1)


def _select_best(out: Path, model, state: dict[str, Any], config: TrainConfig, ckpt_args: dict, writer: RunWriter,
                 device: torch.device) -> int | None:
    """Early stopping (Wong et al. 2020, Sec. 5.3; Rice et al. 2020): load the best epoch's weights into ``model``
    and commit them as the run's final checkpoint, which ``trustlab attack`` then evaluates. On a resume after
    that commit, ``model`` was loaded from it already."""
    history, metric = state["history"], config.defense.selection_metric
    best = _best_epoch(history, config)
    if best is None:
        log.warning("keep_best: no epoch was trained at the full eps with a %s check; keeping the last", metric)
        return None
    latest = latest_checkpoint(out)
    if latest is not None and latest.name == _FINAL:  # resumed after the selection was committed
        return best
    ckpt_dir = latest_checkpoint(out / _BEST_DIR)
    if ckpt_dir is None or ckpt_dir.name != f"epoch_{best:04d}":
        raise CheckpointError(f"keep_best: the weights of epoch {best} are missing from {out / _BEST_DIR}")
    model.load_state_dict(load_checkpoint(ckpt_dir, expected_arch=ckpt_args["arch"], map_location=device).model.state_dict())
    writer.call(commit_checkpoint, out, _FINAL, model, **ckpt_args, state={**state, "selected_epoch": best})
    log.info("keep_best: the run ends with the weights of epoch %d (%s %.3f)", best, metric,
             next(r[metric] for r in history if r["epoch"] == best))
    return best


def _finish(out: Path, model, splits: Splits, config: TrainConfig, history: list, seconds: float, writer: RunWriter,
            device: torch.device, selected: int | None = None) -> dict[str, Any]:
    x, y = (t.to(device) for t in splits.test)
    probs = predict_proba(model, x, batch_size=config.eval_batch_size)
    conf, pred = probs.max(1)
    y, pred, conf = y.tolist(), pred.tolist(), conf.tolist()
    records = [{"idx": i, "y": y[i], "pred": pred[i], "correct": pred[i] == y[i], "confidence": conf[i]}
               for i in range(len(y))]
    writer.records("records.jsonl", records)
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
    latest = latest_checkpoint(out)
    if latest is not None:  # the checkpoint these records were computed on, so reports combine only its results
        summary["checkpoint"] = checkpoint_ref(latest)
    writer.json("summary.json", summary)
    return summary
