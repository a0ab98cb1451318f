"""``trustlab smooth``: randomized smoothing of a trained run's model on its test split, one record per example.

Each evaluation lands in ``RUN/smoothing/<id>/`` with ``config.json`` (mode, noise, sigma, n0, n, alpha, the norm
of the radius, the examples, the seed, the checkpoint and its sha256, versions), ``records.jsonl`` (one row per
example: ``idx, y, prediction, abstain, pA_lower, pvalue, radius, correct, seconds``) and ``summary.json``
(accuracy, abstention rate, certified accuracy at radii 0, 0.25, ..., 2.0 and the average certified radius for
CERTIFY; seconds). ``<id>`` is a readable prefix plus a hash of the configuration, so evaluations that differ in
anything never share a folder; the batch size is recorded but not part of it (counts do not depend on it, RS-09).
The folder is committed in one rename under the run's lock (:func:`~trustlab.evaluation.record_set.\
commit_record_set`), as certifications are.

Examples are smoothed in groups of :data:`EXAMPLES_PER_GROUP`; the noise batch of a group mixes its examples
(``SmoothedClassifier`` streams ``group * n`` noisy rows in forward batches of ``batch_size``). Group ``j`` draws
from ``derive_generator(seed, j)``, and an example's ``seconds`` is its group's wall time over the group's size.
``prediction`` is ``-1`` (:data:`~trustlab.smoothing.ABSTAIN`) on abstention; ``correct`` is ``prediction == y``,
so abstentions count as incorrect (RS-10).

A killed evaluation resumes: each finished group's records are journaled in ``RUN/smoothing/.<id>.partial/``
(:mod:`trustlab.evaluation.journal`), and the same command (the same configuration on the same checkpoint) goes on
from the next group. Since group ``j`` draws from its own generator, the committed records are those of an
uninterrupted run but for their ``seconds``; the summary's ``seconds`` adds the journaled groups' time and
``resumed_groups`` counts them. A journal of another configuration, checkpoint or group size is discarded.

Under torchrun the ranks take the groups in turn (rank ``r`` smooths groups ``r, r + W, ...``) and rank 0 gathers
them, journals them in order and writes the one folder. Since each group's generator is keyed by the group, not by
the rank or by what ran before, the records are a single process's with the same seed (their ``seconds`` aside);
a job has work for at most ``ceil(N / EXAMPLES_PER_GROUP)`` ranks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from trustlab.checkpoint import checkpoint_ref, latest_checkpoint, load_checkpoint
from trustlab.device import resolve_device, runtime_info
from trustlab.distributed import SINGLE, Distributed
from trustlab.evaluation.record_set import (check_run, check_subset, commit_record_set, committed_summary,
                                            evaluation_examples)
from trustlab.evaluation.journal import BatchJournal, partial_folder
from trustlab.evaluation.sharding import run_sharded
from trustlab.reports.kinds.smoothing import REPORT_RADII, average_certified_radius, certified_accuracy
from trustlab.runs import config_hash, versions
from trustlab.runs.folder import run_lock
from trustlab.seeding import derive_generator
from trustlab.smoothing import ABSTAIN, DEFAULT_BATCH_SIZE, SmoothedClassifier, make_noise
from trustlab.smoothing.stats import check_alpha
from trustlab.validation import check_positive_int

__all__ = ["smoothing_config", "smoothing_id", "smoothing_run", "SMOOTHING_DIR", "MODES", "EXAMPLES_PER_GROUP"]

log = logging.getLogger(__name__)
SMOOTHING_DIR = "smoothing"  # RUN/smoothing/<id>/
MODES = ("certify", "predict")
EXAMPLES_PER_GROUP = 100


def smoothing_config(mode: str, *, sigma: float, n: int, alpha: float, n0: int | None = None,
                     noise: str = "gaussian", subset: int | None = None, seed: int = 0) -> dict[str, Any]:
    """What makes two smoothing evaluations the same (the checkpoint is checked apart, by its sha256).

    Raises:
        ValueError, TypeError: an unknown mode or noise, or an invalid number (named).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    noise_cfg = make_noise(noise, sigma)
    check_positive_int(n, "n")
    if mode == "certify":
        check_positive_int(n0, "n0")
    check_subset(subset)
    return {"mode": mode, "noise": noise_cfg.name, "sigma": noise_cfg.scale, "p": noise_cfg.p,
            "n0": n0 if mode == "certify" else None, "n": n, "alpha": check_alpha(alpha), "subset": subset,
            "seed": int(seed)}


def smoothing_id(config: dict[str, Any]) -> str:
    """The folder of an evaluation, e.g. ``certify-gaussian-sigma0.25-n10000-alpha0.001-n500-1f2e3d4c5b``."""
    return (f"{config['mode']}-{config['noise']}-sigma{config['sigma']:g}-n{config['n']}-alpha{config['alpha']:g}"
            f"-n{config['subset'] or 'all'}-{config_hash(config)[:10]}")


def _rows(smoothed: SmoothedClassifier, x: torch.Tensor, y: torch.Tensor, config: dict[str, Any], *,
          batch_size: int, progress: bool, journal: BatchJournal | None = None,
          job: Distributed = SINGLE) -> list[dict[str, Any]]:
    """The records of every group, in order, on rank 0 (none on the other ranks); group ``j`` draws from
    ``derive_generator(seed, j)`` whichever rank smooths it. The groups ``journal`` (rank 0's) holds are taken
    from it, the others are smoothed and journaled as they finish."""
    def smooth_group(j: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        start = j * EXAMPLES_PER_GROUP
        xs, ys = x[start:start + EXAMPLES_PER_GROUP], y[start:start + EXAMPLES_PER_GROUP].tolist()
        gen = derive_generator(config["seed"], j)
        t0 = time.perf_counter()
        if config["mode"] == "certify":
            out = smoothed.certify(xs, config["n0"], config["n"], config["alpha"], generator=gen,
                                   batch_size=batch_size)
            extra = [{"pA_lower": float(a), "pvalue": None, "radius": float(r)} for a, r in zip(out.pA_lower, out.radius)]
        else:
            out = smoothed.predict(xs, config["n"], config["alpha"], generator=gen, batch_size=batch_size)
            extra = [{"pA_lower": None, "pvalue": float(v), "radius": None} for v in out.pvalue]
        seconds = (time.perf_counter() - t0) / len(xs)
        rows = [{"idx": start + i, "y": int(label), "prediction": int(pred), "abstain": pred == ABSTAIN, **more,
                 "correct": pred == label, "seconds": seconds}
                for i, (label, pred, more) in enumerate(zip(ys, out.prediction.tolist(), extra))]
        return {}, {"rows": rows}

    done = journal.resume() if journal is not None else []  # each group has its own generator: no state
    start = job.broadcast_object(len(done))
    done += run_sharded(range(start, -(-len(x) // EXAMPLES_PER_GROUP)), smooth_group, journal=journal, job=job,
                        progress=progress, desc=f"smooth {config['mode']}", unit="group")
    return [r for _, extra in done for r in extra["rows"]]


def smoothing_run(run_dir: Path, mode: str, *, sigma: float, n: int, alpha: float, n0: int | None = None,
                  noise: str = "gaussian", subset: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  seed: int = 0, root: str | None = None, device: str = "auto", reuse: bool = False,
                  progress: bool = False, job: Distributed = SINGLE) -> dict[str, Any]:
    """Smooth the run's latest checkpoint with PREDICT or CERTIFY on its test split and commit
    ``RUN/smoothing/<id>/``.

    Args:
        run_dir: a run folder written by ``trustlab train``.
        mode: ``"certify"`` or ``"predict"``.
        sigma: the noise's scale in pixel space (the Gaussian std; lambda for uniform and Laplace).
        n: estimation samples per example (PREDICT's samples).
        alpha: the per-example failure probability, in ``(0, 1)``.
        n0: CERTIFY's selection samples (required for certify).
        noise: ``"gaussian"``, ``"uniform"`` or ``"laplace"``.
        subset: the first ``subset`` test examples (the prefix other evaluations take); None for all.
        batch_size: noisy rows per forward pass.
        seed: the seed of the noise.
        root: the data root (default: the run's, then ``$TRUSTLAB_DATA``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        reuse: return a committed evaluation with exactly this configuration on the same checkpoint as is.
        progress: show a progress bar over example groups.
        job: this process's place in a torchrun job (:data:`~trustlab.distributed.SINGLE` for one process): every
            rank smooths its share of the groups, rank 0 alone locks the run, journals, resumes and commits, every
            rank returns the summary.

    A killed evaluation resumes: finished groups are journaled in ``RUN/smoothing/.<id>.partial/`` and the same
    call goes on from the next one (:mod:`trustlab.evaluation.journal`).

    Returns:
        The summary (see the module docstring).

    Raises:
        FileNotFoundError: ``run_dir`` is not a trustlab run or has no checkpoint.
        ValueError, TypeError: an invalid setting (named).
        RunInUseError: another process is writing the run.

    Guarantee:
        CERTIFY's per example: with probability at least ``1 - alpha`` for each example, not simultaneously over
        the dataset, its answer is ``g(x)`` with a valid radius or an abstention (exact arithmetic assumed).
    """
    run_dir = check_run(run_dir)
    identity = smoothing_config(mode, sigma=sigma, n=n, alpha=alpha, n0=n0, noise=noise, subset=subset, seed=seed)
    check_positive_int(batch_size, "batch_size")
    with run_lock(run_dir) if job.is_main else contextlib.nullcontext():
        ckpt_dir = latest_checkpoint(run_dir)
        if ckpt_dir is None:
            raise FileNotFoundError(f"no valid checkpoint found in {run_dir}")
        checkpoint = checkpoint_ref(ckpt_dir)
        out = run_dir / SMOOTHING_DIR / smoothing_id(identity)
        if reuse:
            done = job.broadcast_object(committed_summary(out, identity, checkpoint) if job.is_main else None)
            if done is not None:
                return done
        dev = job.device(resolve_device(device))
        model = load_checkpoint(ckpt_dir, map_location=dev).model.eval()
        x, y = (t.to(dev) for t in evaluation_examples(run_dir, root=root, subset=subset))
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        smoothed = SmoothedClassifier(model, num_classes, identity["sigma"], noise=identity["noise"])
        log.info("smooth %s (%s sigma=%g) on %d test examples of %s (%s%s)", mode, identity["noise"],
                 identity["sigma"], len(x), run_dir, dev, f", {job.world_size} processes" if job.enabled else "")
        # the group size is no part of the id (it is fixed in code) but shapes every group's draws: a journal
        # written with another one must not be resumed
        journal = (BatchJournal(partial_folder(out), {**identity, "examples_per_group": EXAMPLES_PER_GROUP},
                                checkpoint) if job.is_main else None)
        t0 = time.perf_counter()
        records = _rows(smoothed, x, y.cpu(), identity, batch_size=batch_size, progress=progress, journal=journal,
                        job=job)
        summary = None
        if job.is_main:
            summary = _summary(identity, records, time.perf_counter() - t0 + journal.resumed_seconds, ckpt_dir.name,
                               checkpoint["sha256"])
            if journal.resumed_batches:
                summary["resumed_groups"] = journal.resumed_batches  # groups a killed earlier process had finished
            runtime = {**runtime_info(dev), **({"processes": job.world_size} if job.enabled else {})}
            config = {**identity, "batch_size": batch_size, "examples_per_group": EXAMPLES_PER_GROUP,
                      "checkpoint": checkpoint, "run": str(run_dir), "runtime": runtime, "versions": versions()}
            commit_record_set(out, {"config.json": config, "records.jsonl": records, "summary.json": summary})
            journal.clear()
    return job.broadcast_object(summary)


def _summary(identity: dict[str, Any], records: list[dict[str, Any]], seconds: float, checkpoint: str,
             sha256: str) -> dict[str, Any]:
    n = len(records)
    summary: dict[str, Any] = {"mode": identity["mode"], "noise": identity["noise"], "sigma": identity["sigma"],
                               "alpha": identity["alpha"], "n_examples": n,
                               "accuracy": sum(r["correct"] for r in records) / n,
                               "abstain_rate": sum(r["abstain"] for r in records) / n}
    if identity["mode"] == "certify":
        summary["certified_acc"] = {f"{r:g}": certified_accuracy(records, r) for r in REPORT_RADII}
        summary["average_certified_radius"] = average_certified_radius(records)
    return {**summary, "seconds": seconds, "seconds_per_example": seconds / n, "checkpoint": checkpoint,
            "checkpoint_sha256": sha256}
