"""``trustlab verify``: certify a trained run's model on its test split and write per-example certificate records.

Each certification lands in ``RUN/certificates/<id>/`` with ``config.json`` (the bound method and every setting,
the threat, the subset, ``margin_tol``, the checkpoint and its sha256, versions), ``records.jsonl`` (one row per
example: ``idx, y, pred, correct, verdict, certified, min_margin_lower, margin_lower, seconds``) and
``summary.json`` (certified and clean accuracy, mean smallest margin bound, seconds). ``<id>`` is a readable prefix
plus a hash of the configuration, so certifications that differ in anything never share a folder; the batch size
is recorded but not part of it (bounds do not depend on it, CERT-10). The folder is committed in one rename under
the run's lock, as attack evaluations are (:mod:`trustlab.evaluation.attack_run`).

The examples are the first ``subset`` of the run's test split, the same prefix ``trustlab attack --subset`` takes,
so certificate and attack records of one run match by ``idx`` (the report's EVAL-14 cross-check relies on it).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from trustlab.attacks import predict_proba
from trustlab.attacks.base import threat_dict
from trustlab.certify import MARGIN_TOL, Certificate, Method, certify
from trustlab.certify.registry import resolve_method
from trustlab.certify.solver import SolverMethod
from trustlab.checkpoint import checkpoint_ref, latest_checkpoint, load_checkpoint
from trustlab.device import resolve_device, runtime_info
from trustlab.distributed import SINGLE, Distributed
from trustlab.evaluation.record_set import (check_run, check_subset, commit_record_set, committed_summary,
                                            evaluation_examples)
from trustlab.evaluation.journal import BatchJournal, partial_folder
from trustlab.evaluation.sharding import run_sharded
from trustlab.runs import config_hash, versions
from trustlab.runs.folder import run_lock
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["certificate_config", "certificate_id", "certificate_rows", "certify_run", "CERTIFICATES_DIR",
           "DEFAULT_BATCH_SIZE"]

log = logging.getLogger(__name__)
CERTIFICATES_DIR = "certificates"  # RUN/certificates/<id>/
COUNTEREXAMPLES = "counterexamples.safetensors"  # FALSIFIED examples: idx (M,), clean and counterexample (M, *D)
SOLVER_CHUNK = 4  # examples a solver method certifies between two journal entries
DEFAULT_BATCH_SIZE = 256


def certificate_config(method: str | Method, threat: LpBall, *, subset: int | None,
                       margin_tol: float = MARGIN_TOL) -> dict[str, Any]:
    """What makes two certifications the same: the method with every setting, the threat, the subset and the
    margin a certificate needs. The checkpoint is checked apart, by its sha256."""
    config = resolve_method(method)
    return {"method": config.to_dict(), "name": config.name, "threat": threat_dict(threat), "subset": subset,
            "margin_tol": margin_tol}


def certificate_id(method: str | Method, threat: LpBall, *, subset: int | None, margin_tol: float = MARGIN_TOL) -> str:
    """The folder of a certification, e.g. ``crown-linf-eps0.1-n1000-1f2e3d4c5b``: a readable prefix and a hash
    of :func:`certificate_config`."""
    config = certificate_config(method, threat, subset=subset, margin_tol=margin_tol)
    norm = "linf" if threat.p == math.inf else "l2"
    return f"{config['name']}-{norm}-eps{threat.eps:g}-n{subset or 'all'}-{config_hash(config)[:10]}"


def certificate_rows(certificates: list[Certificate], pred: list[int]) -> list[dict[str, Any]]:
    """One flat record per certificate, with the model's clean prediction ``pred`` of the same example.

    ``correct`` is ``pred == y``; ``certified`` implies it (a misclassified example is FALSIFIED). Infinite margin
    bounds are written as null.

    Raises:
        ValueError: ``pred`` does not have one entry per certificate.
    """
    if len(pred) != len(certificates):
        raise ValueError(f"pred must have one entry per certificate ({len(certificates)}), got {len(pred)}")
    rows = []
    for c, p in zip(certificates, pred):
        record = c.to_record()
        rows.append({"idx": c.index, "y": c.label, "pred": int(p), "correct": int(p) == c.label,
                     "verdict": c.verdict.value, "certified": c.certified,
                     "min_margin_lower": record["min_margin_lower"], "margin_lower": record["margin_lower"],
                     "seconds": c.seconds, **({"solver": record["solver"]} if "solver" in record else {})})
    return rows


def certify_run(
    run_dir: Path, method: str | Method, threat: LpBall, *, subset: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, margin_tol: float = MARGIN_TOL, root: str | None = None,
    device: str = "auto", reuse: bool = False, progress: bool = False, job: Distributed = SINGLE,
) -> dict[str, Any]:
    """Certify the run's latest (final) checkpoint on its test split and commit ``RUN/certificates/<id>/``.

    Args:
        run_dir: a run folder written by ``trustlab train``.
        method: a bound method's name (``"ibp"``, ``"crown-ibp"``, ``"crown"``, ``"alpha-crown"``) or configuration.
        threat: the l_inf or l_2 ball and the input box.
        subset: certify the first ``subset`` test examples; None for all.
        batch_size: examples bounded together.
        margin_tol: the margin lower bound a certificate needs.
        root: the data root (default: the run's, then ``$TRUSTLAB_DATA``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        reuse: return a committed certification with exactly this configuration on the same checkpoint as is.
        progress: show a progress bar over the chunks.
        job: this process's place in a torchrun job (:data:`~trustlab.distributed.SINGLE` for one process).

    A killed certification resumes: finished chunks are journaled in ``RUN/certificates/.<id>.partial/`` and
    the same call goes on from the next one (:mod:`trustlab.evaluation.journal`).

    In a distributed ``job`` every rank loads the checkpoint and the examples and certifies its share of the
    chunks (rank ``r`` chunks ``r, r + W, ...``); rank 0 alone locks the run, journals, resumes and commits, and
    every rank returns the summary. The records are one process's, but for their times (``seconds``, the
    solver's per-class ``seconds``) and for a solver stopped by its time limit, which depends on the machine's load.

    Returns:
        The summary: ``method, n, clean_acc, certified_acc, mean_min_margin_lower, seconds,
        seconds_per_example, seconds_median, seconds_max`` (per example), the verdict counts ``certified,
        falsified, unknown``, ``solver_status`` (solver methods: counts over example and class),
        ``checkpoint, checkpoint_sha256``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a trustlab run or has no checkpoint.
        ValueError: an unknown method (the message lists the valid ones) or an invalid setting.
        UnsupportedLayerError: the model has layers the method cannot bound (listed), before any bound.
        NumericalError: a bound exceeds the margin at ``x`` itself (an unsound bound: a bug).
        RunInUseError: another process is writing the run.
    """
    run_dir = check_run(run_dir)
    check_subset(subset)
    check_positive_int(batch_size, "batch_size")
    margin_tol = check_nonneg_float(margin_tol, "margin_tol")
    identity = certificate_config(method, threat, subset=subset, margin_tol=margin_tol)
    with run_lock(run_dir) if job.is_main else contextlib.nullcontext():
        ckpt_dir = latest_checkpoint(run_dir)
        if ckpt_dir is None:
            raise FileNotFoundError(f"no valid checkpoint found in {run_dir}")
        checkpoint = checkpoint_ref(ckpt_dir)
        out = run_dir / CERTIFICATES_DIR / certificate_id(method, threat, subset=subset, margin_tol=margin_tol)
        if reuse:
            done = job.broadcast_object(committed_summary(out, identity, checkpoint) if job.is_main else None)
            if done is not None:
                return done
        dev = job.device(resolve_device(device))
        model = load_checkpoint(ckpt_dir, map_location=dev).model.eval()
        x, y = (t.to(dev) for t in evaluation_examples(run_dir, root=root, subset=subset))
        log.info("certify %s on %d test examples of %s (%s%s)", identity["name"], len(x), run_dir, dev,
                 f", {job.world_size} processes" if job.enabled else "")
        pred = predict_proba(model, x, batch_size=batch_size).argmax(1).tolist()
        journal = BatchJournal(partial_folder(out), identity, checkpoint) if job.is_main else None
        t0 = time.perf_counter()
        records, found = _certify_journaled(model, x, y, threat, resolve_method(method), pred, journal,
                                            batch_size=batch_size, margin_tol=margin_tol, progress=progress, job=job)
        summary = None
        if job.is_main:
            summary = _commit(out, records, found, x, journal, identity=identity, checkpoint=checkpoint,
                              seconds=time.perf_counter() - t0, ckpt_name=ckpt_dir.name,
                              config={**identity, "batch_size": batch_size, "checkpoint": checkpoint,
                                      "run": str(run_dir), "runtime": _runtime(dev, job)})
    return job.broadcast_object(summary)


def _runtime(device: torch.device, job: Distributed) -> dict[str, Any]:
    return {**runtime_info(device), **({"processes": job.world_size} if job.enabled else {})}


def _commit(out: Path, records: list[dict[str, Any]], found: dict[int, Tensor], x: Tensor, journal: BatchJournal, *,
            identity: dict[str, Any], checkpoint: dict[str, Any], seconds: float, ckpt_name: str,
            config: dict[str, Any]) -> dict[str, Any]:
    """Commit the certification to ``out`` and clear its journal; returns the summary."""
    summary = _summary(identity["name"], records, seconds + journal.resumed_seconds, ckpt_name, checkpoint["sha256"])
    if journal.resumed_batches:
        summary["resumed_batches"] = journal.resumed_batches
    files: dict[str, Any] = {"config.json": {**config, "versions": versions()}, "records.jsonl": records}
    if found:  # the points inside the threat set that the model misclassifies, beside their clean inputs
        idx = sorted(found)
        files[COUNTEREXAMPLES] = save({"idx": torch.tensor(idx, dtype=torch.int64),
                                       "clean": torch.stack([x[i] for i in idx]).cpu().contiguous(),
                                       "counterexample": torch.stack([found[i] for i in idx]).cpu().contiguous()})
    files["summary.json"] = summary
    commit_record_set(out, files)
    journal.clear()
    return summary


def _certify_journaled(model, x: Tensor, y: Tensor, threat: LpBall, method: Method, pred: list[int],
                       journal: BatchJournal | None, *, batch_size: int, margin_tol: float, progress: bool,
                       job: Distributed = SINGLE) -> tuple[list[dict[str, Any]], dict[int, Tensor]]:
    """Certify in chunks, each journaled when done (its records and FALSIFIED counterexamples), so that a killed
    certification resumes from the next chunk. A solver method journals every few examples (each may take a
    minute), a bound method every batch. The chunks after the journaled examples are shared out over the ranks
    of ``job`` (:func:`~trustlab.evaluation.sharding.run_sharded`); rank 0 returns every record and
    counterexample, the other ranks none. Certification draws no randomness of its own (the MILP's PGD attack
    seeds its generator with a constant per example), so a chunk's result does not depend on the rank."""
    chunk = min(batch_size, SOLVER_CHUNK) if isinstance(method, SolverMethod) else batch_size
    done = journal.resume() if journal is not None else []  # no generator state to restore
    records = [r for _, extra in done for r in extra["records"]]
    found = {int(k): t.to(x.device) for tensors, _ in done for k, t in tensors.items()}
    first = job.broadcast_object(len(records))  # chunks restart after the journaled examples, whatever their size

    def certify_chunk(start: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        certs = [replace(c, index=c.index + start) for c in
                 certify(model, x[start : start + chunk], y[start : start + chunk], threat, method=method,
                         batch_size=batch_size, margin_tol=margin_tol)]
        new = {str(c.index): c.counterexample for c in certs if c.counterexample is not None}
        return new, {"records": certificate_rows(certs, pred[start : start + chunk])}

    for tensors, extra in run_sharded(range(first, len(x), chunk), certify_chunk, journal=journal, job=job,
                                      progress=progress, desc="certify"):
        records += extra["records"]
        found.update({int(k): t.to(x.device) for k, t in tensors.items()})
    return records, found


def _summary(method: str, records: list[dict[str, Any]], seconds: float, checkpoint: str,
             sha256: str) -> dict[str, Any]:
    n = len(records)
    finite = [r["min_margin_lower"] for r in records if r["min_margin_lower"] is not None]
    times = [r["seconds"] for r in records]
    verdicts = Counter(r["verdict"] for r in records)
    out = {"method": method, "n": n, "clean_acc": sum(r["correct"] for r in records) / n,
           "certified_acc": sum(r["certified"] for r in records) / n,
           "mean_min_margin_lower": sum(finite) / len(finite) if finite else None, "seconds": seconds,
           "seconds_per_example": seconds / n, "seconds_median": statistics.median(times),
           "seconds_max": max(times), "certified": verdicts["certified"], "falsified": verdicts["falsified"],
           "unknown": verdicts["unknown"], "checkpoint": checkpoint, "checkpoint_sha256": sha256}
    statuses = Counter(s for r in records if "solver" in r for s in r["solver"]["status"])
    if statuses:
        out["solver_status"] = dict(sorted(statuses.items()))  # over (example, class) pairs
    return out
