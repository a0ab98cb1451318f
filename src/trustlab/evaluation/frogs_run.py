"""Poison Frogs (Shafahi et al. 2018) in the transfer-learning setting, on a trained run's feature extractor.

``frogs_run(RUN, dataset="mnist", pairs=50)`` takes the run's model up to its last linear layer as the frozen
feature extractor phi (trained on the run's own dataset: the other dataset, or other classes, than the one
attacked), fits a linear head on phi's features of ``train_size`` points of ``dataset``'s training split (the
clean model), and for each of ``pairs`` target/base pairs crafts one poison from the base towards the target
(:func:`~trustlab.poisoning.feature_collision.transfer_attack`), retrains the head on the training points plus
that poison (labelled with the base class: clean label), and reads the target's prediction. It commits
``RUN/poisoning/frogs-<hash>/``: ``config.json`` (``action: "frogs"``), ``records.jsonl`` with one row per pair
(:data:`ROW_FIELDS`), ``poisons.safetensors`` (poisons, targets, bases, the poisons' labels) and
``summary.json``.

Reference:
    A. Shafahi et al. Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018,
    arXiv:1804.00792, Section 4.1 (transfer learning: one poison per target).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trustlab.data import dataset_info, load_dataset
from trustlab.evaluation.poisoning_run import POISONING_DIR, _model
from trustlab.evaluation.record_set import check_run, commit_record_set
from trustlab.poisoning.feature_collision import FeatureCollisionConfig, select_pairs, transfer_attack
from trustlab.runs import config_hash, versions
from trustlab.runs.folder import run_lock
from trustlab.seeding import derive_generator

__all__ = ["ROW_FIELDS", "CLASS_PAIRS", "Penultimate", "class_pairs", "frogs_run"]

ROW_FIELDS = ("idx", "y", "target_idx", "base_idx", "base_class", "clean_pred", "poisoned_pred", "success",
              "delta_l2", "delta_linf", "feature_distance", "clean_acc_before", "clean_acc_after")
# (target class, base class): each class a target once and a base once
CLASS_PAIRS = ((3, 8), (1, 7), (4, 9), (5, 6), (2, 0), (8, 3), (7, 1), (9, 4), (6, 5), (0, 2))
POISONS_FILE = "poisons.safetensors"


class Penultimate(nn.Module):
    """phi: a classifier's input to its last ``nn.Linear`` layer, differentiable (a forward hook, not a copy).

    Args:
        model: the classifier (not modified; its parameters are not trained here).

    Raises:
        ValueError: the model has no ``nn.Linear`` layer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input is a representation")
        self.model = model
        self._last = linears[-1]

    def forward(self, x: Tensor) -> Tensor:
        seen: list[Tensor] = []
        hook = self._last.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].flatten(1)))
        try:
            self.model(x)
        finally:
            hook.remove()
        return seen[0]


def class_pairs(target_class: int | None, base_class: int | None, num_classes: int) -> tuple[tuple[int, int], ...]:
    """The (target, base) class pairs: the one given, or :data:`CLASS_PAIRS` when neither is given.

    Raises:
        ValueError: only one of the two given, a class out of ``[0, num_classes)``, or the two equal.
    """
    if target_class is None and base_class is None:
        return tuple((t, b) for t, b in CLASS_PAIRS if max(t, b) < num_classes)
    if target_class is None or base_class is None:
        raise ValueError("give both target_class and base_class, or neither")
    for name, c in (("target class", target_class), ("base class", base_class)):
        if not 0 <= c < num_classes:
            raise ValueError(f"{name} {c} is out of range [0, {num_classes})")
    if target_class == base_class:
        raise ValueError(f"target and base class must differ, got {target_class} for both")
    return ((target_class, base_class),)


def _draw(y_test: Tensor, classes, pairs: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Target and base indices into the test split (disjoint, each used once) and the base classes."""
    g = derive_generator(seed, 1)
    per = math.ceil(pairs / len(classes))
    ti, bi, bc = [], [], []
    for t, b in classes:
        tt, bb = select_pairs(y_test, y_test, target_class=t, base_class=b, n_pairs=per, num_classes=num_classes,
                              generator=g)
        ti.append(tt)
        bi.append(bb)
        bc.append(torch.full((per,), b, dtype=torch.int64))
    ti, bi, bc = (torch.stack(v, 1).flatten()[:pairs] for v in (ti, bi, bc))  # interleave the class pairs
    if len(set(ti.tolist()) | set(bi.tolist())) < 2 * pairs:
        raise ValueError(f"{pairs} pairs need distinct targets and bases; fewer test examples per class pair")
    return ti, bi, bc


def frogs_run(run_dir: Path, *, dataset: str = "mnist", pairs: int = 50, target_class: int | None = None,
              base_class: int | None = None, config: FeatureCollisionConfig = FeatureCollisionConfig(),
              train_size: int = 2000, eval_size: int = 2000, seed: int = 0, root: str | None = None,
              head_steps: int = 200, two_class: bool = False) -> dict[str, Any]:
    """Poison Frogs on ``pairs`` target/base pairs, one poison each, with the run's model as phi.

    Args:
        run_dir: a trained run; its model up to the last linear layer is phi.
        dataset: the transfer dataset (same input shape as the run's).
        pairs: target/base pairs (>= 1).
        target_class, base_class: one class pair for all, or None for :data:`CLASS_PAIRS` in turn.
        config: the attack settings (beta0, step size, steps, opacity, box).
        train_size: training points of the head (a seeded draw from the training split).
        eval_size: test points for clean accuracy (not targets or bases).
        seed: the seed of the draws.
        root: the data root.
        head_steps: L-BFGS iterations of each head fit.
        two_class: the paper's binary setting (dog vs fish): the head's training and evaluation sets hold only
            the one class pair's examples (needs ``target_class`` and ``base_class``).

    Returns:
        The summary: success rate, mean and max perturbation sizes, clean accuracy before and after.

    Raises:
        ValueError: pairs < 1, bad classes (INP-17, named), two_class without a class pair.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be an int >= 1, got {pairs!r}")
    if two_class and (target_class is None or base_class is None):
        raise ValueError("two_class needs target_class and base_class")
    run_dir = check_run(run_dir)
    info = dataset_info(dataset)
    classes = class_pairs(target_class, base_class, info.num_classes)
    model, ckpt = _model(run_dir)
    phi = Penultimate(model).requires_grad_(False)
    x_tr, y_tr = load_dataset(dataset, "train", root=root, download=False)
    x_te, y_te = load_dataset(dataset, "test", root=root, download=False)
    with torch.no_grad():
        model(x_te[:1])  # fails early, with torch's message, on another input shape
    allowed = torch.isin(y_tr, torch.tensor(classes[0])) if two_class else torch.ones(len(y_tr), dtype=torch.bool)
    pool = torch.nonzero(allowed).flatten()
    keep = pool[torch.randperm(len(pool), generator=derive_generator(seed, 0))[:train_size]]
    ti, bi, bc = _draw(y_te, classes, pairs, info.num_classes, seed)
    free = torch.isin(y_te, torch.tensor(classes[0])) if two_class else torch.ones(len(y_te), dtype=torch.bool)
    free[ti] = free[bi] = False
    ev = torch.nonzero(free).flatten()[:eval_size]

    def fit_head(f, y, k):
        from trustlab.poisoning.feature_collision import fit_linear_head
        return fit_linear_head(f, y, k, steps=head_steps)

    r = transfer_attack(phi, (x_tr[keep], y_tr[keep]), (x_te[ev], y_te[ev]), targets=(x_te[ti], y_te[ti]),
                        bases=(x_te[bi], y_te[bi]), base_class=bc, num_classes=info.num_classes, config=config,
                        fit_head=fit_head)
    rows = [{"idx": i, "y": int(y_te[ti[i]]), "target_idx": int(ti[i]), "base_idx": int(bi[i]),
             "base_class": int(bc[i]), "clean_pred": int(r.target_pred_clean[i]), "poisoned_pred": int(r.target_pred[i]),
             "success": bool(r.success[i]), "delta_l2": float(r.delta_l2[i]), "delta_linf": float(r.delta_linf[i]),
             "feature_distance": float(r.feature_distance[i]), "clean_acc_before": r.clean_accuracy_before,
             "clean_acc_after": float(r.clean_accuracy[i])} for i in range(pairs)]
    summary = _summary(rows, dataset=dataset)
    set_config = {"action": "frogs", "dataset": dataset, "pairs": pairs, "class_pairs": [list(c) for c in classes],
                  "collision": config.to_dict(), "train_size": train_size, "eval_size": len(ev), "seed": seed,
                  "head_steps": head_steps, "two_class": two_class, "root": root, "image_shape": list(info.shape), "checkpoint": ckpt,
                  "versions": versions()}
    files = {"config.json": set_config, "records.jsonl": rows,
             POISONS_FILE: _poisons_bytes(r.x_poison, x_te[ti], x_te[bi], bc), "summary.json": summary}
    with run_lock(run_dir):
        commit_record_set(run_dir / POISONING_DIR / f"frogs-{config_hash(set_config)[:10]}", files)
    return summary


def _poisons_bytes(x_poison: Tensor, targets: Tensor, bases: Tensor, labels: Tensor) -> bytes:
    from safetensors.torch import save

    return save({"x_poison": x_poison.contiguous(), "target": targets.contiguous(), "base": bases.contiguous(),
                 "y_poison": labels.contiguous()})


def _summary(rows: list[dict[str, Any]], *, dataset: str) -> dict[str, Any]:
    n = len(rows)
    clean_wrong = sum(r["clean_pred"] == r["base_class"] for r in rows)
    return {"action": "frogs", "dataset": dataset, "pairs": n, "success_rate": sum(r["success"] for r in rows) / n,
            "clean_pred_already_base": clean_wrong,
            "clean_correct": sum(r["clean_pred"] == r["y"] for r in rows),
            "success_on_clean_correct": (sum(r["success"] for r in rows if r["clean_pred"] == r["y"])
                                         / max(1, sum(r["clean_pred"] == r["y"] for r in rows))),
            "delta_l2_mean": sum(r["delta_l2"] for r in rows) / n, "delta_l2_max": max(r["delta_l2"] for r in rows),
            "delta_linf_mean": sum(r["delta_linf"] for r in rows) / n,
            "delta_linf_max": max(r["delta_linf"] for r in rows),
            "clean_acc_before": rows[0]["clean_acc_before"],
            "clean_acc_after_mean": sum(r["clean_acc_after"] for r in rows) / n,
            "clean_acc_after_min": min(r["clean_acc_after"] for r in rows)}
