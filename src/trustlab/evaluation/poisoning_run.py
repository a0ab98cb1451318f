"""Poisoning experiments on run folders: train a backdoored run, defend it, plant a signature backdoor.

Record sets land in ``RUN/poisoning/<id>/`` (``config.json``, ``records.jsonl``, ``summary.json``), committed in
one rename under the run's lock (:func:`~trustlab.evaluation.record_set.commit_record_set`). Every config holds
``action`` (``backdoor``, ``defend`` or ``signature``); every row holds ``idx`` and ``y``:

- ``backdoor-<hash>``: one row per test example: ``pred``, ``pred_triggered`` of the backdoored model and
  ``baseline_pred``, ``baseline_pred_triggered`` of the clean-trained baseline run; the summary holds ASR (on
  ``y != target``), clean accuracy and both for the baseline (POI-04), and ``examples``: a few triggered images.
- ``defend-<method>-<hash>``: one row per training point of the poisoned set: ``poisoned``, ``score``,
  ``flagged``; the summary holds recall, precision and the retrained run's ASR and clean accuracy next to the
  backdoored run's.
- ``signature-<hash>``: one row per test example: ``same_logits`` (check a), ``activated_all`` and
  ``max_linf`` over every target label (check b); the summary holds the query counts of the three checks and
  the key holder's time to activate one input for one label (``b_seconds_per_input``: signing and embedding).

The poisoned training set is rebuilt from ``data_transform.json``'s configuration with the run's transform
stream (``derive_generator(seed, 13)``), and its poisoned indices are checked against the recorded ones.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from trustlab.attacks.evaluate import predict
from trustlab.checkpoint import checkpoint_ref, latest_checkpoint, load_checkpoint
from trustlab.data import make_splits
from trustlab.data.transform import apply_transform
from trustlab.evaluation.record_set import check_run, commit_record_set, evaluation_examples
from trustlab.poisoning.backdoor import BackdoorPoisoning, attack_success_rate
from trustlab.poisoning.defenses import (METHODS, WithoutPoints, activation_clustering, detection_quality,
                                         penultimate_features, spectral_signatures)
from trustlab.poisoning.triggers import Trigger
from trustlab.runs import config_hash, read_json, versions
from trustlab.runs.folder import run_lock
from trustlab.seeding import derive_generator
from trustlab.training.config import TrainConfig
from trustlab.training.run import train_run

__all__ = ["POISONING_DIR", "N_EXAMPLES_SHOWN", "backdoor_of", "poisoned_training_set", "backdoor_train",
           "defend_run", "signature_run"]

log = logging.getLogger(__name__)
POISONING_DIR = "poisoning"
N_EXAMPLES_SHOWN = 8
_TRANSFORM_SEED_KEY = 13  # train_run's stream of a training-set transformation


def _model(run_dir: Path, device: torch.device | str = "cpu"):
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no valid checkpoint found in {run_dir}")
    return load_checkpoint(ckpt, map_location=device).model.eval(), checkpoint_ref(ckpt)


def backdoor_of(run_dir: Path) -> BackdoorPoisoning:
    """The backdoor poisoning a run was trained with, from its ``data_transform.json``.

    Raises:
        FileNotFoundError: the run has no ``data_transform.json`` (it was not poisoned).
        ValueError: its transform is not a backdoor poisoning.
    """
    path = Path(run_dir) / "data_transform.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no data_transform.json: it was not trained by `trustlab poison backdoor`")
    cfg = read_json(path)["transform"]
    if cfg.get("name") != "backdoor":
        raise ValueError(f"{run_dir} was trained with transform {cfg.get('name')!r}, not a backdoor poisoning")
    return BackdoorPoisoning(Trigger(**cfg["trigger"]), rate=cfg["rate"], target=cfg["target"], mode=cfg["mode"])


def poisoned_training_set(run_dir: Path, *, root: str | None = None):
    """The run's training set as it was trained on, and the indices of its poisoned points.

    Returns:
        ``(x, y, poisoned, config, backdoor)``.

    Raises:
        ValueError: the rebuilt poisoned indices differ from the recorded ones.
    """
    config = TrainConfig.from_saved(dict(read_json(Path(run_dir) / "config.json")["config"]))
    backdoor = backdoor_of(run_dir)
    splits = make_splits(config.dataset, root=root or config.root, val_size=config.val_size, seed=config.seed,
                         subset=config.subset)
    splits, record = apply_transform(splits, backdoor, generator=derive_generator(config.seed, _TRANSFORM_SEED_KEY))
    recorded = read_json(Path(run_dir) / "data_transform.json")["replaced"]
    if record["replaced"] != recorded:
        raise ValueError(f"the poisoned indices rebuilt for {run_dir} differ from its data_transform.json")
    x, y = splits.train
    return x, y, torch.as_tensor(recorded, dtype=torch.int64), config, backdoor


def _evaluate_backdoor(run_dir: Path, baseline: Path, backdoor: BackdoorPoisoning, *,
                       root: str | None) -> dict[str, Any]:
    """Commit ``RUN/poisoning/backdoor-<hash>/`` and return its summary."""
    x, y = evaluation_examples(run_dir, root=root)
    model, ckpt = _model(run_dir)
    base_model, base_ckpt = _model(baseline)
    xt = backdoor.trigger(x)
    preds = {"pred": predict(model, x), "pred_triggered": predict(model, xt), "baseline_pred": predict(base_model, x),
             "baseline_pred_triggered": predict(base_model, xt)}
    t = backdoor.target
    rows = [{"idx": i, "y": int(y[i]), **{k: int(v[i]) for k, v in preds.items()}} for i in range(len(y))]
    summary = {"action": "backdoor", "target": t, "trigger": backdoor.trigger.to_dict(),
               "asr": attack_success_rate(model, x, y, backdoor.trigger, target=t),
               "clean_acc": float((preds["pred"] == y).float().mean()),
               "baseline_asr": attack_success_rate(base_model, x, y, backdoor.trigger, target=t),
               "baseline_clean_acc": float((preds["baseline_pred"] == y).float().mean()),
               "n_asr": int((y != t).sum()), "n_clean": len(y),
               "examples": {"idx": list(range(N_EXAMPLES_SHOWN)),
                            "clean": x[:N_EXAMPLES_SHOWN].tolist(), "triggered": xt[:N_EXAMPLES_SHOWN].tolist()}}
    config = {"action": "backdoor", "poisoning": backdoor.to_dict(), "checkpoint": ckpt,
              "baseline": {"run": str(baseline), "checkpoint": base_ckpt}, "versions": versions()}
    with run_lock(run_dir):
        commit_record_set(run_dir / POISONING_DIR / f"backdoor-{config_hash(config)[:10]}",
                          {"config.json": config, "records.jsonl": rows, "summary.json": summary})
    return summary


def backdoor_train(config: TrainConfig, out: Path, backdoor: BackdoorPoisoning, *, baseline: Path,
                   progress: bool = False, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train the poisoned run ``out`` and the clean ``baseline`` run (reused when complete), then evaluate.

    Args:
        config: the training configuration of both runs.
        out: the poisoned run's folder.
        backdoor: the poisoning.
        baseline: the clean run's folder (trained with the same config if absent, resumed or reused otherwise).
        progress: show progress bars.
        overwrite: replace an existing ``out``; resume: continue ``out`` from its last checkpoint.

    Returns:
        The backdoor evaluation's summary (ASR, clean accuracy, their baselines).

    Raises:
        ValueError: a bad poisoning (see :func:`~trustlab.poisoning.backdoor.poison_indices`), or a baseline run
            with another config.
    """
    train_run(config, Path(out), transform=backdoor, progress=progress, overwrite=overwrite, resume=resume)
    train_run(config, Path(baseline), resume=Path(baseline).exists(), progress=progress)
    return _evaluate_backdoor(Path(out), Path(baseline), backdoor, root=config.root)


def _detect(method: str, reps: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int):
    if method == "spectral":
        return spectral_signatures(reps, y, rate=eps)
    return activation_clustering(reps, y, seed=seed)


def defend_run(run_dir: Path, method: str, *, out: Path, baseline: Path | None = None, root: str | None = None,
               epsilon: float | None = None, seed: int = 0, progress: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Flag poisoned points of a backdoored run, retrain without them into ``out``, and commit
    ``RUN/poisoning/defend-<method>-<hash>/``.

    The spectral defense's epsilon is by default the poisoned share of the target class (``n_poisoned /
    n_target`` in the poisoned set, the paper's known budget); it removes ``floor(1.5 * epsilon * n_c)`` points
    of *every* class ``c``, so a large share costs clean points too. Activation clustering needs none.

    Args:
        run_dir: a run trained by :func:`backdoor_train`.
        method: ``"spectral"`` or ``"activation-clustering"``.
        out: the retrained run's folder.
        baseline: the clean run, for the baseline ASR (default: the one the backdoor evaluation names).
        root: the data root.
        epsilon: the spectral defense's assumed poisoned share per class (default: see above).
        seed: the seed of activation clustering.
        progress: show progress bars; overwrite: replace an existing ``out``.

    Returns:
        The summary: recall, precision, flagged count, and ASR / clean accuracy before and after.

    Raises:
        ValueError: an unknown method; FileNotFoundError: not a poisoned run.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    run_dir = check_run(run_dir)
    x, y, poisoned, config, backdoor = poisoned_training_set(run_dir, root=root)
    model, ckpt = _model(run_dir)
    reps = penultimate_features(model, x)
    eps = len(poisoned) / max(1, int((y == backdoor.target).sum())) if epsilon is None else epsilon
    det = _detect(method, reps, y, eps=min(1.0, eps), seed=seed)
    quality = detection_quality(det.flagged, poisoned)
    train_run(config, Path(out), transform=WithoutPoints(backdoor, tuple(det.flagged.tolist())), progress=progress,
              overwrite=overwrite)
    xt, yt = evaluation_examples(run_dir, root=root)
    retrained, _ = _model(Path(out))
    is_poisoned = torch.zeros(len(y), dtype=torch.bool)
    is_poisoned[poisoned] = True
    is_flagged = torch.zeros(len(y), dtype=torch.bool)
    is_flagged[det.flagged] = True
    rows = [{"idx": i, "y": int(y[i]), "poisoned": bool(is_poisoned[i]), "score": float(det.scores[i]),
             "flagged": bool(is_flagged[i])} for i in range(len(y))]
    t = backdoor.target
    summary = {"action": "defend", "method": method, "epsilon": eps, **quality,
               "asr_before": attack_success_rate(model, xt, yt, backdoor.trigger, target=t),
               "clean_acc_before": float((predict(model, xt) == yt).float().mean()),
               "asr_after": attack_success_rate(retrained, xt, yt, backdoor.trigger, target=t),
               "clean_acc_after": float((predict(retrained, xt) == yt).float().mean()), "retrained_run": str(out)}
    if baseline is not None:
        base_model, _ = _model(Path(baseline))
        summary["baseline_asr"] = attack_success_rate(base_model, xt, yt, backdoor.trigger, target=t)
    config_out = {"action": "defend", "method": method, "seed": seed, "epsilon": eps, "poisoning": backdoor.to_dict(),
                  "checkpoint": ckpt, "retrained_run": str(out), "versions": versions()}
    with run_lock(run_dir):
        commit_record_set(run_dir / POISONING_DIR / f"defend-{method}-{config_hash(config_out)[:10]}",
                          {"config.json": config_out, "records.jsonl": rows, "summary.json": summary})
    return summary


def _differ(clean: torch.nn.Module, backdoored: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> int:
    """How many inputs get different logits from the two models (bitwise)."""
    with torch.no_grad():
        return sum(int((clean(x[i:i + batch_size]) != backdoored(x[i:i + batch_size])).any(dim=1).sum())
                   for i in range(0, len(x), batch_size))


def _gradient_search(clean, backdoored, x: torch.Tensor, num_classes: int, *, steps: int, eps: float,
                     step_size: float) -> tuple[int, int]:
    """Targeted l_inf PGD on the backdoored model towards every label; each iterate is a query. Returns
    ``(queries, inputs where the two models differ)``."""
    queries = differ = 0
    for t in range(num_classes):
        xa = x.clone()
        target = torch.full((len(x),), t)
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = -torch.nn.functional.cross_entropy(backdoored(xa), target)
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.min(torch.max(xa.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
            differ += _differ(clean, backdoored, xa)
            queries += len(xa)
    return queries, differ


def signature_run(run_dir: Path, *, queries: int = 10_000, n_examples: int | None = None, key_seed: int | None = None,
                  bits_per_pixel: int = 12, pgd_steps: int = 10, seed: int = 0,
                  root: str | None = None) -> dict[str, Any]:
    """Plant a signature backdoor in the run's model and run the three checks; commit
    ``RUN/poisoning/signature-<hash>/``.

    Args:
        run_dir: any trained run.
        queries: random uniform queries and as many randomly perturbed test inputs (check a and c).
        n_examples: the first test examples used (all by default).
        key_seed: None for a fresh secret key (never written); an int for a reproducible, public one.
        bits_per_pixel: payload bits per carrier pixel.
        pgd_steps: steps of the key-less gradient search, per target label.
        seed: the seed of the random queries.
        root: the data root.

    Returns:
        The summary: differing counts and query counts of checks a and c, activation success and the largest
        l_inf perturbation of check b with the wall time of activation (in all and per input and label), the
        budget and the number of carrier pixels.

    Raises:
        MissingDependencyError: ``cryptography`` is not installed.
    """
    from trustlab.poisoning.signature import SignatureBackdoor, activate, carrier_count, generate_keys

    run_dir = check_run(run_dir)
    private, public = generate_keys(key_seed)
    clean, ckpt = _model(run_dir)
    backdoored = SignatureBackdoor(clean, public, bits_per_pixel=bits_per_pixel).eval()
    x, y = evaluation_examples(run_dir, root=root, subset=n_examples)
    with torch.no_grad():
        k = clean(x[:1]).shape[1]
    g = derive_generator(seed, 0)
    uniform = torch.rand(queries, *x.shape[1:], generator=g)
    near = (x[torch.randint(len(x), (queries,), generator=g)]
            + 0.05 * torch.randn(queries, *x.shape[1:], generator=g)).clamp(0, 1)
    same = [(clean(x[i:i + 1]) == backdoored(x[i:i + 1])).all().item() for i in range(len(x))]
    activated = torch.ones(len(x), dtype=torch.bool)
    linf = torch.zeros(len(x))
    activation_seconds = 0.0
    for t in range(k):
        start = time.perf_counter()
        xa = activate(x, t, private, bits_per_pixel=bits_per_pixel)
        activation_seconds += time.perf_counter() - start
        with torch.no_grad():
            activated &= backdoored(xa).argmax(1) == t
        linf = torch.max(linf, (xa - x).abs().flatten(1).max(dim=1).values)
    grad_queries, grad_differ = _gradient_search(clean, backdoored, x[:100], k, steps=pgd_steps, eps=0.1,
                                                 step_size=0.02)
    eps = backdoored.eps
    summary = {"action": "signature", "bits_per_pixel": bits_per_pixel, "carrier_pixels": carrier_count(bits_per_pixel),
               "linf_budget": eps, "n_examples": len(x),
               "a_differ_test": len(x) - sum(same), "a_differ_uniform": _differ(clean, backdoored, uniform),
               "a_differ_perturbed": _differ(clean, backdoored, near), "a_queries": len(x) + 2 * queries,
               "b_activated": int(activated.sum()), "b_pairs": len(x) * k, "b_max_linf": float(linf.max()),
               "b_within_budget": bool((linf <= eps).all()), "b_seconds": activation_seconds,
               "b_seconds_per_input": activation_seconds / (len(x) * k),
               "c_gradient_queries": grad_queries, "c_gradient_differ": grad_differ,
               "public_key": public.hex(), "key_seed": key_seed}
    rows = [{"idx": i, "y": int(y[i]), "same_logits": bool(same[i]), "activated_all": bool(activated[i]),
             "max_linf": float(linf[i])} for i in range(len(x))]
    config = {"action": "signature", "bits_per_pixel": bits_per_pixel, "queries": queries, "subset": n_examples,
              "key_seed": key_seed, "public_key": public.hex(), "pgd_steps": pgd_steps, "seed": seed,
              "checkpoint": ckpt, "versions": versions()}
    with run_lock(run_dir):
        commit_record_set(run_dir / POISONING_DIR / f"signature-{config_hash(config)[:10]}",
                          {"config.json": config, "records.jsonl": rows, "summary.json": summary})
    return summary
