"""Poison Frogs end to end (Shafahi et al. 2018, Section 5): K watermarked poisons per target, the whole network
fine-tuned on them.

``frogs_end_to_end_run(RUN, target_class=3, base_class=8, targets=10, poisons=50)`` takes the run's trained model:
for each target it crafts K poisons against the frozen feature extractor phi (the model up to its last linear
layer), each from another base of the base class watermarked with the target
(:func:`~trustlab.poisoning.feature_collision.end_to_end_sets`), then fine-tunes a copy of the WHOLE network (all
layers, from the run's weights) on ``train_size`` clean training points plus the K poisons labelled with the base
class, and reads the target's prediction. Two controls share the fine-tuning (same epochs, optimizer and batch
order): the same set with the K watermarked bases unperturbed (the collision removed), per target; and the clean
points alone (no additions), once. It commits ``RUN/poisoning/frogs-e2e-<hash>/``: ``config.json`` (``action:
"frogs-end-to-end"``), ``records.jsonl`` with one row per target (:data:`ROW_FIELDS`), ``poisons.safetensors``
(every target's K poisons, in target order) and ``summary.json``.

Fine-tuning is standard training (cross-entropy, :func:`~trustlab.training.loop.train_epoch`) with the run's
optimizer, momentum and weight decay and a constant learning rate (the run's unless ``lr`` is given), whatever
defense the run was trained with.

Reference:
    A. Shafahi et al. Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018,
    arXiv:1804.00792, Section 5 (end-to-end training: 50 poisons, 30% opacity watermarking).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trustlab.attacks.evaluate import predict
from trustlab.data import dataset_info, load_dataset
from trustlab.data.loader import make_loader
from trustlab.evaluation.frogs_run import POISONS_FILE, Penultimate, class_pairs
from trustlab.evaluation.poisoning_run import POISONING_DIR, _model
from trustlab.evaluation.record_set import check_run, commit_record_set
from trustlab.poisoning.feature_collision import FeatureCollisionConfig, end_to_end_sets
from trustlab.runs import config_hash, read_json, versions
from trustlab.runs.folder import run_lock
from trustlab.seeding import derive_generator, derive_seed
from trustlab.threat import LpBall
from trustlab.training.defenses.erm import ERM
from trustlab.training.loop import train_epoch
from trustlab.training.optimizers import build_optimizer, build_scheduler

__all__ = ["ROW_FIELDS", "finetune", "frogs_end_to_end_run"]

ROW_FIELDS = ("idx", "y", "target_idx", "base_idx", "base_class", "clean_pred", "poisoned_pred", "success",
              "control_pred", "control_success", "clean_finetune_pred", "delta_l2", "delta_l2_max", "delta_linf",
              "delta_linf_max", "feature_distance", "clean_acc_before", "clean_acc_after", "control_acc_after",
              "clean_finetune_acc")


def finetune(model: nn.Module, x: Tensor, y: Tensor, settings: dict[str, Any], *, seed: int) -> nn.Module:
    """A copy of ``model`` with every layer trained for ``settings["epochs"]`` epochs of standard training on (x, y).

    ``settings``: ``optimizer``, ``lr`` (constant), ``momentum``, ``weight_decay``, ``batch_size``, ``epochs``.

    The batch order depends on ``seed`` and ``len(x)`` only, so two sets of equal size (the poisoned set and its
    control) are seen in the same order. ``model`` itself is not changed.
    """
    net = copy.deepcopy(model).requires_grad_(True)
    gen = torch.Generator()
    loader = make_loader(x, y, batch_size=settings["batch_size"], shuffle=True, generator=gen)
    opt = build_optimizer(settings["optimizer"], net.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                          weight_decay=settings["weight_decay"])
    sched = build_scheduler("constant", opt, total_steps=settings["epochs"] * len(loader))
    objective = ERM().objective(LpBall(0.0, math.inf))
    for epoch in range(settings["epochs"]):
        gen.manual_seed(derive_seed(seed, epoch, 0))
        train_epoch(net, loader, opt, sched, objective=objective, generator=derive_generator(seed, epoch, 1),
                    progress=False)
    return net.eval().requires_grad_(False)


def _settings(run_dir: Path, *, epochs: int, lr: float | None, batch_size: int | None) -> dict[str, Any]:
    run = read_json(run_dir / "config.json")["config"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"finetune_epochs must be an int >= 1, got {epochs!r}")
    out = {"optimizer": run["optimizer"], "lr": float(lr if lr is not None else run["lr"]),
           "momentum": run["momentum"], "weight_decay": run["weight_decay"],
           "batch_size": int(batch_size if batch_size is not None else run["batch_size"]), "epochs": epochs}
    if not (math.isfinite(out["lr"]) and out["lr"] > 0):
        raise ValueError(f"lr must be finite and > 0, got {out['lr']}")
    if out["batch_size"] < 1:
        raise ValueError(f"batch_size must be >= 1, got {out['batch_size']}")
    return out


def _draw(y_te: Tensor, *, target_class: int, base_class: int, targets: int, poisons: int,
          seed: int) -> tuple[Tensor, list[Tensor]]:
    """Target indices and, per target, K base indices into the test split (bases distinct within a target)."""
    t_pool = torch.nonzero(y_te == target_class).flatten()
    b_pool = torch.nonzero(y_te == base_class).flatten()
    if len(t_pool) < targets:
        raise ValueError(f"need {targets} targets of class {target_class}, found {len(t_pool)}")
    if len(b_pool) < poisons:
        raise ValueError(f"need {poisons} bases of class {base_class}, found {len(b_pool)}")
    ti = t_pool[torch.randperm(len(t_pool), generator=derive_generator(seed, 1))[:targets]]
    bi = [b_pool[torch.randperm(len(b_pool), generator=derive_generator(seed, 2, i))[:poisons]]
          for i in range(targets)]
    return ti, bi


def frogs_end_to_end_run(run_dir: Path, *, target_class: int, base_class: int, dataset: str = "mnist",
                         targets: int = 10, poisons: int = 50,
                         config: FeatureCollisionConfig = FeatureCollisionConfig(opacity=0.3),
                         train_size: int = 2000, eval_size: int = 2000, finetune_epochs: int = 2,
                         lr: float | None = None, batch_size: int | None = None, seed: int = 0,
                         root: str | None = None, two_class: bool = False) -> dict[str, Any]:
    """Poison Frogs end to end on ``targets`` targets, ``poisons`` watermarked poisons each, with controls.

    Args:
        run_dir: a trained run; its model is phi (frozen while crafting) and the start of every fine-tuning.
        target_class, base_class: the targets' class and the bases' class (the poisons' clean label).
        dataset: the dataset of targets, bases and fine-tuning (the run's input shape).
        targets: targets from the test split (>= 1).
        poisons: K, poisons per target (>= 1), each from another base of the test split.
        config: the collision settings; ``opacity`` is the watermark (the paper: 0.3).
        train_size: clean training points of the fine-tuning (a seeded draw from the training split).
        eval_size: test points (no targets or bases) for clean accuracy.
        finetune_epochs: epochs of fine-tuning; optimizer, momentum and weight decay are the run's.
        lr: the fine-tuning learning rate (default the run's), constant.
        batch_size: the fine-tuning batch size (default the run's).
        seed: the seed of the draws and of the fine-tuning's batch order.
        root: the data root.
        two_class: fine-tune and evaluate on the target and base classes only (the paper's binary setting).

    Returns:
        The summary: success rates of the poisons and of both controls, perturbation sizes, clean accuracies.

    Raises:
        ValueError: targets or poisons < 1 (the value named), bad classes, too few examples of a class.
    """
    for name, v in (("targets", targets), ("poisons", poisons)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if target_class is None or base_class is None:
        raise ValueError(f"end to end needs a target class and a base class, got {target_class} and {base_class}")
    run_dir = check_run(run_dir)
    info = dataset_info(dataset)
    ((target_class, base_class),) = class_pairs(target_class, base_class, info.num_classes)
    settings = _settings(run_dir, epochs=finetune_epochs, lr=lr, batch_size=batch_size)
    model, ckpt = _model(run_dir)
    phi = Penultimate(model).requires_grad_(False)
    x_tr, y_tr = load_dataset(dataset, "train", root=root, download=False)
    x_te, y_te = load_dataset(dataset, "test", root=root, download=False)
    pair = torch.tensor([target_class, base_class])
    allowed = torch.isin(y_tr, pair) if two_class else torch.ones(len(y_tr), dtype=torch.bool)
    pool = torch.nonzero(allowed).flatten()
    keep = pool[torch.randperm(len(pool), generator=derive_generator(seed, 0))[:train_size]]
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    ti, bi = _draw(y_te, target_class=target_class, base_class=base_class, targets=targets, poisons=poisons,
                   seed=seed)
    free = torch.isin(y_te, pair) if two_class else torch.ones(len(y_te), dtype=torch.bool)
    free[ti] = False
    free[torch.cat(bi)] = False
    ev = torch.nonzero(free).flatten()[:eval_size]
    x_ev, y_ev = x_te[ev], y_te[ev]

    def accuracy(net: nn.Module) -> float:
        return float((predict(net, x_ev) == y_ev).float().mean())

    clean_pred = predict(model, x_te[ti])
    acc_before = accuracy(model)
    plain = finetune(model, x_tr, y_tr, settings, seed=seed)  # the no-poison control, shared by every target
    plain_pred, plain_acc = predict(plain, x_te[ti]), accuracy(plain)
    rows, x_poison = [], []
    for i in range(targets):
        t = x_te[ti[i]]
        sets = end_to_end_sets(phi, (x_tr, y_tr), t, x_te[bi[i]], base_class, config,
                               info={"target_idx": int(ti[i]), "base_idx": bi[i].tolist()})
        poisoned = finetune(model, sets.poisoned.x, sets.poisoned.y, settings, seed=seed)
        control = finetune(model, sets.control.x, sets.control.y, settings, seed=seed)
        pred, ctrl = int(predict(poisoned, t[None])[0]), int(predict(control, t[None])[0])
        delta = (sets.collision.x_poison - x_te[bi[i]]).flatten(1)
        l2, linf = delta.norm(dim=1), delta.abs().amax(1)
        rows.append({"idx": i, "y": int(y_te[ti[i]]), "target_idx": int(ti[i]), "base_idx": bi[i].tolist(),
                     "base_class": base_class, "clean_pred": int(clean_pred[i]), "poisoned_pred": pred,
                     "success": pred == base_class, "control_pred": ctrl, "control_success": ctrl == base_class,
                     "clean_finetune_pred": int(plain_pred[i]), "delta_l2": float(l2.mean()),
                     "delta_l2_max": float(l2.max()), "delta_linf": float(linf.mean()),
                     "delta_linf_max": float(linf.max()),
                     "feature_distance": float(sets.collision.feature_distance.mean()),
                     "clean_acc_before": acc_before, "clean_acc_after": accuracy(poisoned),
                     "control_acc_after": accuracy(control), "clean_finetune_acc": plain_acc})
        x_poison.append(sets.collision.x_poison)
    summary = _summary(rows, dataset=dataset, poisons=poisons)
    set_config = {"action": "frogs-end-to-end", "dataset": dataset, "targets": targets, "poisons": poisons,
                  "class_pairs": [[target_class, base_class]], "collision": config.to_dict(), "finetune": settings,
                  "train_size": len(keep), "eval_size": len(ev), "seed": seed, "two_class": two_class, "root": root,
                  "image_shape": list(info.shape), "checkpoint": ckpt, "versions": versions()}
    files = {"config.json": set_config, "records.jsonl": rows,
             POISONS_FILE: _poisons_bytes(torch.cat(x_poison), x_te[ti], x_te[torch.cat(bi)], base_class),
             "summary.json": summary}
    with run_lock(run_dir):
        commit_record_set(run_dir / POISONING_DIR / f"frogs-e2e-{config_hash(set_config)[:10]}", files)
    return summary


def _poisons_bytes(x_poison: Tensor, targets: Tensor, bases: Tensor, base_class: int) -> bytes:
    from safetensors.torch import save

    return save({"x_poison": x_poison.contiguous(), "target": targets.contiguous(), "base": bases.contiguous(),
                 "y_poison": torch.full((len(x_poison),), base_class, dtype=torch.int64)})


def _summary(rows: list[dict[str, Any]], *, dataset: str, poisons: int) -> dict[str, Any]:
    n = len(rows)
    correct = [r for r in rows if r["clean_pred"] == r["y"]]

    def rate(key: str, among: list[dict[str, Any]]) -> float | None:
        return sum(bool(r[key]) for r in among) / len(among) if among else None

    return {"action": "frogs-end-to-end", "dataset": dataset, "targets": n, "poisons": poisons,
            "success_rate": rate("success", rows), "control_success_rate": rate("control_success", rows),
            "clean_finetune_success_rate": sum(r["clean_finetune_pred"] == r["base_class"] for r in rows) / n,
            "clean_correct": len(correct), "success_on_clean_correct": rate("success", correct),
            "control_success_on_clean_correct": rate("control_success", correct),
            "delta_l2_mean": sum(r["delta_l2"] for r in rows) / n, "delta_l2_max": max(r["delta_l2_max"] for r in rows),
            "delta_linf_mean": sum(r["delta_linf"] for r in rows) / n,
            "delta_linf_max": max(r["delta_linf_max"] for r in rows),
            "clean_acc_before": rows[0]["clean_acc_before"],
            "clean_acc_after_mean": sum(r["clean_acc_after"] for r in rows) / n,
            "control_acc_after_mean": sum(r["control_acc_after"] for r in rows) / n,
            "clean_finetune_acc": rows[0]["clean_finetune_acc"]}
