"""``trustlab attack``: attack a trained run's model on its test split and write per-example records.

Each evaluation lands in ``RUN/attacks/<id>/`` with ``config.json`` (every attack hyperparameter, the threat
model, the seed, the subset, the checkpoint and its sha256, versions), ``records.jsonl``, ``examples.safetensors``,
``summary.json`` and ``checks.json`` (the gradient-masking checks of :mod:`trustlab.evaluation.checks` on the first
:data:`CHECK_EXAMPLES` attacked inputs, so reports show them without a model); the run's own ``summary.json`` is
not touched. ``<id>`` is a readable prefix plus a hash of
the full configuration, so two evaluations that differ in anything (the seed, the subset) never share a folder.
The five files are written into a hidden temp folder that is renamed into place (as checkpoints are), so a result
is either wholly there or absent, and the run folder is locked for the whole evaluation.
The framework, not the attack, decides success: ``x_adv`` is clipped into the ball and the box again and the
prediction recomputed (EVAL-02). An ensemble's records also say which member broke each example (``broken_by``)
and its ``summary.json`` lists per member the examples it attacked and broke and its time (``members``).
A killed evaluation resumes: each finished batch is journaled in ``RUN/attacks/.<id>.partial/``
(:mod:`trustlab.evaluation.journal`), and the same command goes on from the next batch with the same result.

Randomness is keyed by batch: batch ``b`` (examples ``b * batch_size`` to ``(b + 1) * batch_size - 1`` of the
evaluated set) draws from its own generator ``derive_generator(seed, 11, b)``, so its result does not depend on
which process attacks it or on what ran before. Under torchrun the ranks take the batches in turn (rank ``r``
attacks batches ``r, r + W, ...``), rank 0 gathers them and writes the one folder, whose records equal a single
process's with the same seed and batch size. (Until this keying, one stream ran through all batches; the config
says ``"generators": "per-batch"``, so earlier evaluations are neither reused nor resumed.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from safetensors.torch import save

from trustlab.attacks import attack_batched, build_attack, predict_proba
from trustlab.attacks.base import threat_dict
from trustlab.attacks.ensemble import Ensemble, ensemble_with_log
from trustlab.attacks.wrappers import through_bpda
from trustlab.checkpoint import checkpoint_ref, latest_checkpoint, load_checkpoint
from trustlab.compute import Compute, check_compute, prepare
from trustlab.device import resolve_device, runtime_info
from trustlab.distributed import SINGLE, Distributed
from trustlab.errors import NumericalError
from trustlab.evaluation.checks import MODEL_CHECKS, run_checks
from trustlab.evaluation.journal import BatchJournal, partial_folder
from trustlab.evaluation.record_set import (check_run, check_subset, commit_record_set, committed_summary,
                                            evaluation_examples)
from trustlab.evaluation.sharding import run_sharded
from trustlab.runs import config_hash, versions
from trustlab.runs.folder import run_lock
from trustlab.seeding import derive_generator
from trustlab.threat import LpBall
from trustlab.validation import check_positive_int

__all__ = ["attack_id", "attack_config", "evaluate_attack", "evaluate_ensemble", "member_names", "attack_run",
           "attack_batches", "model_checks", "CHECK_EXAMPLES"]

log = logging.getLogger(__name__)
CHECK_EXAMPLES = 100  # inputs the model-level checks run on: cheap next to the attack, enough to see masking
_STREAM_KEY = 11  # batch b of an evaluation draws from derive_generator(seed, 11, b)
_GENERATORS = "per-batch"  # how an evaluation's randomness is keyed, in its config


def attack_id(name: str, threat: LpBall, params: dict[str, Any], *, seed: int = 0, subset: int | None = None,
              batch_size: int = 500, bpda: bool = False, compute: Compute = Compute()) -> str:
    """The folder of an evaluation: a readable prefix and a hash of its full configuration
    (:func:`attack_config`), e.g. ``pgd-linf-eps0.3-steps40-restarts5-1f2e3d4c5b``, ``pgd-bpda-linf-...`` through
    BPDA. A sequence-valued parameter (a custom ensemble's members) shows as its length, ``-members2``; the hash
    covers its content, and a precision other than fp32 (``-bf16``)."""
    norm = "linf" if threat.p == math.inf else "l2"
    extra = "".join(f"-{k.replace('_', '')}{_label(v)}" for k, v in sorted(params.items()) if v is not None)
    attack = build_attack(name, threat, **params)
    digest = config_hash(attack_config(name, threat, attack, seed=seed, subset=subset, batch_size=batch_size,
                                       bpda=bpda, compute=compute))
    precision = "".join(f"-{v}" for v in compute.identity().values())
    return f"{name}{'-bpda' if bpda else ''}-{norm}-eps{threat.eps:g}{extra}{precision}-{digest[:10]}"


def _label(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(len(v)) if isinstance(v, (tuple, list)) else str(v)


def attack_config(name: str, threat: LpBall, attack, *, seed: int, subset: int | None,
                  batch_size: int, bpda: bool = False, compute: Compute = Compute()) -> dict[str, Any]:
    """What makes two evaluations the same: every resolved attack setting, the threat, seed, subset and batch
    size (which examples share a batch's generator), how the generators are keyed (``"generators":
    "per-batch"``), ``bpda: true`` for an attack through BPDA and ``precision: "bf16"`` for one under bf16
    autocast (both absent otherwise, so fp32 evaluations keep their identity). Channels-last and compilation
    change only float rounding and are recorded apart (``compute`` in config.json), as the device is. The
    checkpoint is checked apart, by its sha256."""
    config = {"attack": attack.to_dict(), "name": name, "threat": threat_dict(threat), "seed": seed,
              "subset": subset, "batch_size": batch_size, "generators": _GENERATORS}
    if bpda:
        config["bpda"] = True
    return {**config, **compute.identity()}


def attack_batches(
    n: int, batch_size: int, attack_batch: Callable[[int], tuple[dict[str, Tensor], dict[str, Any]]], *,
    journal: BatchJournal | None = None, job: Distributed = SINGLE, progress: bool = False,
) -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
    """Run ``attack_batch(b)`` for the ``ceil(n / batch_size)`` batches, sharded over the ranks of ``job``.

    Rank ``r`` attacks batches ``r, r + W, ...``; after each round of ``W`` batches rank 0 gathers them and
    journals them in order (:func:`~trustlab.evaluation.sharding.run_sharded`). Batches the ``journal`` (rank
    0's) already holds are not attacked again.

    Returns:
        On rank 0, every batch's ``(tensors, extra)`` in batch order, ``extra["seconds"]`` its wall time; on the
        other ranks, an empty list.
    """
    n_batches = -(-n // batch_size)
    done = journal.resume() if journal is not None else []
    start = job.broadcast_object(len(done))
    return [*done, *run_sharded(range(start, n_batches), attack_batch, journal=journal, job=job, progress=progress,
                                desc="attack")]


def _generator(seed: int, b: int, device: torch.device) -> torch.Generator:
    return derive_generator(seed, _STREAM_KEY, b, device=device)


def evaluate_attack(
    model: nn.Module, x: Tensor, y: Tensor, attack, *, batch_size: int = 500, seed: int = 0, progress: bool = False,
    journal: BatchJournal | None = None, job: Distributed = SINGLE,
) -> tuple[list[dict[str, Any]], Tensor]:
    """Attack ``(x, y)`` in batches; returns one record per example, and ``x_adv``.

    A record holds ``idx, y, pred, correct, adv_pred, adv_correct, robust, dist, confidence, adv_confidence``;
    ``robust`` is ``correct and adv_correct``: a misclassified point is never counted robust. Batch ``b``
    draws from ``derive_generator(seed, 11, b)``. With a ``journal``, the batches it holds are taken from it and
    every new batch is written to it, so a killed evaluation resumes with the same result. In a distributed
    ``job`` the batches are shared out (:func:`attack_batches`); rank 0 returns the records of all of them, the
    other ranks no records and an empty ``x_adv``.
    """
    def attack_batch(b: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        i = b * batch_size
        x_adv = attack_batched(attack, model, x[i : i + batch_size], y[i : i + batch_size], batch_size=batch_size,
                               generator=_generator(seed, b, x.device))
        return {"x_adv": x_adv}, {}

    done = attack_batches(len(x), batch_size, attack_batch, journal=journal, job=job, progress=progress)
    if not job.is_main:
        return [], x[:0]
    x_adv = torch.cat([t["x_adv"].to(x.device) for t, _ in done])
    return _rows(model, x, y, x_adv, attack.threat, batch_size=batch_size), x_adv


def evaluate_ensemble(
    model: nn.Module, x: Tensor, y: Tensor, attack: Ensemble, *, batch_size: int = 500, seed: int = 0,
    progress: bool = False, journal: BatchJournal | None = None, job: Distributed = SINGLE,
) -> tuple[list[dict[str, Any]], Tensor, list[dict[str, Any]]]:
    """:func:`evaluate_attack` for an :class:`Ensemble`, through :func:`ensemble_with_log` with the same batches
    and generators (so ``x_adv`` and the records are the same); also says who broke each example.

    Each record adds ``broken_by``: the name of the member that broke the example (its first success, as judged
    by the ensemble), else ``None``. ``robust`` stays the framework's judgement of the ensemble's ``x_adv``.

    Returns:
        The records, ``x_adv``, and per member in order ``{name, attack, attacked, broken, seconds}``: its
        configuration (``to_dict``), the examples it ran on and broke, and its wall time summed over the batches
        (those of a resumed ``journal`` included). On ranks other than 0 of a distributed ``job``: no records,
        an empty ``x_adv`` and no members.
    """
    members = attack.attacks()
    names = member_names([m.to_dict() for m in members])

    def attack_batch(b: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        i = b * batch_size
        step = ensemble_with_log(model, x[i : i + batch_size], y[i : i + batch_size], attack.threat,
                                 attacks=members, generator=_generator(seed, b, x.device))
        if not torch.isfinite(step.x_adv).all():
            raise NumericalError(f"a member returned NaN or Inf for examples {i}..{i + len(step.x_adv) - 1}")
        return ({"x_adv": step.x_adv, "attacked": step.attacked, "broken": step.broken},
                {"member_seconds": list(step.seconds)})

    done = attack_batches(len(x), batch_size, attack_batch, journal=journal, job=job, progress=progress)
    if not job.is_main:
        return [], x[:0], []
    x_adv = torch.cat([t["x_adv"].to(x.device) for t, _ in done])
    attacked_ = torch.cat([t["attacked"].to(x.device) for t, _ in done], 1)  # (M, N)
    broken_ = torch.cat([t["broken"].to(x.device) for t, _ in done], 1)
    seconds = [sum(extra["member_seconds"][j] for _, extra in done) for j in range(len(members))]
    rows = _rows(model, x, y, x_adv, attack.threat, batch_size=batch_size)
    hit, by = broken_.any(0), broken_.int().argmax(0)  # at most one member breaks an example: its index
    for r, h, j in zip(rows, hit.tolist(), by.tolist()):
        r["broken_by"] = names[j] if h else None
    summary = [{"name": n, "attack": m.to_dict(), "attacked": int(a.sum()), "broken": int(b.sum()), "seconds": s}
               for n, m, a, b, s in zip(names, members, attacked_, broken_, seconds)]
    return rows, x_adv, summary


def member_names(configs: list[dict[str, Any]]) -> list[str]:
    """Short unique names of an ensemble's members from their records, AutoAttack's way: ``apgd-ce``,
    ``apgd-t``, ``fab-t``, ``square``; ``eot-`` in front of an EOT member; ``#k`` (1-based position) after a
    name that would repeat."""
    names = []
    for c in configs:
        name = f"{c['attack']}-{c['loss']}" if c["attack"] == "apgd" and "loss" in c else str(c["attack"])
        names.append(f"eot-{name}" if "eot_samples" in c else name)
    return [f"{n}#{k + 1}" if names.count(n) > 1 else n for k, n in enumerate(names)]


def _rows(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, threat: LpBall, *,
          batch_size: int) -> list[dict[str, Any]]:
    """One record per example of an evaluated ``x_adv`` (see :func:`evaluate_attack`)."""
    clean = predict_proba(model, x, batch_size=batch_size)
    adv = predict_proba(model, x_adv, batch_size=batch_size)
    dist = threat.norm(x_adv - x)
    conf, pred = clean.max(1)
    adv_conf, adv_pred = adv.max(1)
    y, pred, adv_pred, dist, conf, adv_conf = (t.tolist() for t in (y, pred, adv_pred, dist, conf, adv_conf))
    rows = []
    for i in range(len(y)):  # plain Python values: one device-to-host copy per column, not per example
        correct, adv_correct = pred[i] == y[i], adv_pred[i] == y[i]
        rows.append({"idx": i, "y": y[i], "pred": pred[i], "correct": correct, "adv_pred": adv_pred[i],
                     "adv_correct": adv_correct, "robust": correct and adv_correct, "dist": dist[i],
                     "confidence": conf[i], "adv_confidence": adv_conf[i]})
    return rows


def model_checks(model: nn.Module, x: Tensor, y: Tensor, attack, *, run: str = "",
                 n: int = CHECK_EXAMPLES) -> dict[str, Any]:
    """The content of ``checks.json``: :func:`~trustlab.evaluation.checks.run_checks` on the first ``n`` inputs,
    with the attack's loss for the DLR check; ``n`` checked, every check's description, the raised flags."""
    loss = attack.to_dict().get("loss")
    flags = run_checks(model, x[:n], y[:n], attack.threat, losses=(loss,) if isinstance(loss, str) else (), run=run)
    for f in flags:
        log.warning("check %s: %s", f.code, f.message)
    return {"n": min(n, len(x)), "checks": dict(MODEL_CHECKS), "flags": [asdict(f) for f in flags]}


def _example_grid(x: Tensor, x_adv: Tensor, records: list[dict[str, Any]], k: int = 8) -> dict[str, Tensor]:
    """Up to ``k`` examples for the report's grid, successful attacks first (clean, adversarial, labels)."""
    broken = [r["idx"] for r in records if r["correct"] and not r["adv_correct"]]
    taken = set(broken)
    rest = [r["idx"] for r in records if r["idx"] not in taken]
    idx = torch.tensor((broken + rest)[:k], dtype=torch.int64)
    return {"idx": idx, "x": x[idx].contiguous(), "x_adv": x_adv[idx].contiguous()}


def attack_run(
    run_dir: Path, name: str, threat: LpBall, params: dict[str, Any], *,
    subset: int | None = None, batch_size: int = 500, seed: int = 0, root: str | None = None, progress: bool = True,
    reuse: bool = False, device: str = "auto", bpda: bool = False, compute: Compute = Compute(),
    job: Distributed = SINGLE,
) -> dict[str, Any]:
    """Load the run's latest checkpoint, attack its test split, and commit ``RUN/attacks/<id>/``; returns the summary.

    With ``bpda``, the attack differentiates :func:`~trustlab.attacks.wrappers.through_bpda` of the model (its
    leading straight-through preprocessing, such as input quantization, is the identity in the backward pass);
    the forward values, hence the records, are the model's own, and the checks run on the model itself.

    ``compute`` sets how the attack and the records' predictions run the model (:mod:`trustlab.compute`: bf16
    autocast with float32 perturbations and losses, channels-last, ``torch.compile``); the gradient-masking
    checks run on the plain model.

    With ``reuse``, a committed evaluation in that folder whose configuration matches exactly and that was computed
    on the same checkpoint (by sha256) is returned as is.

    In a distributed ``job`` (torchrun) every rank loads the checkpoint and the examples and attacks its share of
    the batches; rank 0 alone locks the run, journals, runs the checks and commits, and every rank returns its
    summary. The records are those of one process with the same seed and batch size.

    Raises:
        FileNotFoundError: ``run_dir`` is not a trustlab run or has no checkpoint.
        RunInUseError: another process is writing the run.
        ValueError: ``compute`` asks for what the device cannot run.
    """
    run_dir = check_run(run_dir)
    check_subset(subset)
    check_positive_int(batch_size, "batch_size")
    if not isinstance(bpda, bool):
        raise TypeError(f"bpda must be a bool, got {bpda!r}")
    attack = build_attack(name, threat, **params)
    identity = attack_config(name, threat, attack, seed=seed, subset=subset, batch_size=batch_size, bpda=bpda,
                             compute=compute)
    with run_lock(run_dir) if job.is_main else contextlib.nullcontext():
        ckpt_dir = latest_checkpoint(run_dir)
        if ckpt_dir is None:
            raise FileNotFoundError(f"no valid checkpoint found in {run_dir}")
        checkpoint = checkpoint_ref(ckpt_dir)
        out = run_dir / "attacks" / attack_id(name, threat, params, seed=seed, subset=subset, batch_size=batch_size,
                                              bpda=bpda, compute=compute)
        if reuse:
            done = job.broadcast_object(committed_summary(out, identity, checkpoint) if job.is_main else None)
            if done is not None:
                return done
        dev = job.device(resolve_device(device))
        check_compute(compute, dev)
        model = load_checkpoint(ckpt_dir, map_location=dev).model.eval()
        attacked = through_bpda(model) if bpda else model  # same forward values; BPDA only changes gradients
        attacked = prepare(attacked, compute, dev)  # the model itself with the default Compute
        x, y = (t.to(dev) for t in evaluation_examples(run_dir, root=root, subset=subset))
        log.info("attack %s on %d test examples of %s (%s%s)", name, len(x), run_dir, dev,
                 f", {job.world_size} processes" if job.enabled else "")
        journal = BatchJournal(partial_folder(out), identity, checkpoint) if job.is_main else None
        t0 = time.perf_counter()
        members = None
        kwargs = {"batch_size": batch_size, "seed": seed, "progress": progress, "journal": journal, "job": job}
        if isinstance(attack, Ensemble):
            records, x_adv, members = evaluate_ensemble(attacked, x, y, attack, **kwargs)
        else:
            records, x_adv = evaluate_attack(attacked, x, y, attack, **kwargs)
        summary = None
        if job.is_main:
            summary = _summarize(out, name, model, x, y, attack, records, x_adv, members, journal, run_dir=run_dir,
                                 ckpt_dir=ckpt_dir, identity=identity, checkpoint=checkpoint, device=dev,
                                 seconds=time.perf_counter() - t0, processes=job.world_size, compute=compute)
    return job.broadcast_object(summary)


def _summarize(out: Path, name: str, model: nn.Module, x: Tensor, y: Tensor, attack, records: list[dict[str, Any]],
               x_adv: Tensor, members: list[dict[str, Any]] | None, journal: BatchJournal, *, run_dir: Path,
               ckpt_dir: Path, identity: dict[str, Any], checkpoint: dict[str, Any], device: torch.device,
               seconds: float, processes: int, compute: Compute) -> dict[str, Any]:
    """Check the model, commit the evaluation to ``out`` and clear its journal; returns the summary."""
    seconds += journal.resumed_seconds
    checks = model_checks(model, x, y, attack, run=run_dir.name)
    n = len(records)
    summary = {"attack": name, "n": n, "clean_acc": sum(r["correct"] for r in records) / n,
               "robust_acc": sum(r["robust"] for r in records) / n, "seconds": seconds,
               "checkpoint": ckpt_dir.name, "checkpoint_sha256": checkpoint["sha256"]}
    if members is not None:
        summary["members"] = members
    if journal.resumed_batches:
        summary["resumed_batches"] = journal.resumed_batches  # batches a killed earlier process had finished
    config = {**identity, "checkpoint": checkpoint, "run": str(run_dir),
              "runtime": {**runtime_info(device), **({"processes": processes} if processes > 1 else {})},
              "compute": compute.to_dict(), "versions": versions()}
    _commit(out, config, records, save(_example_grid(x.cpu(), x_adv.cpu(), records)), summary, checks)
    journal.clear()
    return summary


def _commit(out: Path, config: dict[str, Any], records: list[dict[str, Any]], examples: bytes,
            summary: dict[str, Any], checks: dict[str, Any]) -> None:
    """Write the evaluation into ``attacks/.<id>.<random>.tmp/`` and rename it to ``out`` in one step."""
    commit_record_set(out, {"config.json": config, "records.jsonl": records, "examples.safetensors": examples,
                            "checks.json": checks, "summary.json": summary})
