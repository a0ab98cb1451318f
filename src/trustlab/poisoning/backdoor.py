"""Backdoor data poisoning: triggered training points relabelled to a target class, and the attack success rate.

Dirty-label poisoning (Gu et al. 2017) picks exactly ``round(rate * N)`` of the ``N`` training points among those
whose label is not the target, stamps the trigger on them and sets their label to the target. Clean-label
poisoning (Turner, Tsipras & Madry 2019, without their adversarial perturbation) draws the points only from the
target class and keeps their labels. The points are drawn from a ``torch.Generator`` (the run's transform stream,
``derive_generator(seed, 13)``), so the same seed gives the same indices. :class:`BackdoorPoisoning` is a
``transform=`` for :func:`trustlab.training.run.train_run`: its poisoned points *replace* the originals at the same
index, the run records them in ``data_transform.json`` and every other point stays byte-identical.

The attack success rate (ASR) is measured on the triggered test inputs whose true label is not the target (the
BackdoorBench convention), and :func:`backdoor_metrics` always reports it with clean accuracy and with the ASR of
a clean-trained model as the baseline (POI-04).

Reference:
    Gu, Dolan-Gavitt & Garg 2017, arXiv:1708.06733. Turner, Tsipras & Madry 2019, "Label-Consistent Backdoor
    Attacks", arXiv:1912.02771. BackdoorBench ``utils/backdoor_generate_poison_index.py`` (count and test set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trustlab.attacks.evaluate import predict
from trustlab.data.transform import TransformedSet
from trustlab.poisoning.triggers import Trigger

__all__ = ["MODES", "poison_count", "poison_indices", "BackdoorPoisoning", "attack_success_rate", "backdoor_metrics"]

MODES = ("dirty", "clean")


def poison_count(rate: float, n: int) -> int:
    """``round(rate * n)``, the number of poisoned points.

    Raises:
        ValueError: ``rate`` outside ``[0, 1]``, or a count that rounds to 0 ("no poison sample generated").
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must lie in [0, 1], got {rate}")
    count = round(rate * n)
    if count == 0:
        raise ValueError(f"no poison sample generated: rate {rate} of {n} points rounds to 0")
    return count


def _check_target(target: int, num_classes: int | None) -> None:
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        raise ValueError(f"target must be an int >= 0, got {target!r}")
    if num_classes is not None and target >= num_classes:
        raise ValueError(f"target must lie in [0, {num_classes}), got {target}")


def poison_indices(y: Tensor, rate: float, *, target: int, mode: str = "dirty",
                   generator: torch.Generator, num_classes: int | None = None) -> Tensor:
    """The indices of the points to poison: ``round(rate * len(y))`` of them, sorted.

    Args:
        y: the training labels.
        rate: the poisoned fraction of the whole training set, in ``[0, 1]``.
        target: the target class.
        mode: ``"dirty"`` draws from points with ``y != target``; ``"clean"`` only from ``y == target``.
        generator: the stream the draw comes from.
        num_classes: when given, ``target`` must lie in ``[0, num_classes)``.

    Returns:
        int64 indices into ``y``, sorted ascending, without repeats.

    Shapes:
        y (N,) -> (round(rate * N),).

    Raises:
        ValueError: a bad rate, target or mode, or fewer candidates than points to poison (counts named).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    _check_target(target, num_classes)
    count = poison_count(rate, len(y))
    candidates = torch.nonzero(y == target if mode == "clean" else y != target).flatten()
    if len(candidates) < count:
        which = "of the target class" if mode == "clean" else "outside the target class"
        raise ValueError(f"{mode}-label poisoning needs {count} points {which} {target}, "
                         f"but the training set has {len(candidates)}")
    pick = torch.randperm(len(candidates), generator=generator)[:count]
    return candidates[pick].sort().values


@dataclass(frozen=True)
class BackdoorPoisoning:
    """A ``transform=`` for ``train_run``: poison ``rate`` of the training set with ``trigger`` towards ``target``.

    Args:
        trigger: what is stamped on the poisoned points.
        rate: the poisoned fraction, in ``[0, 1]``; exactly ``round(rate * N)`` points.
        target: the target class.
        mode: ``"dirty"`` (relabel to ``target``) or ``"clean"`` (only target-class points, labels kept).
    """

    trigger: Trigger = field(default_factory=Trigger)
    rate: float = 0.05
    target: int = 0
    mode: str = "dirty"
    name: str = "backdoor"

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> TransformedSet:
        """The poisoned set; ``replaced`` holds the poisoned indices (POI-01, POI-02).

        Raises:
            ValueError: see :func:`poison_indices`.
        """
        idx = poison_indices(y, self.rate, target=self.target, mode=self.mode, generator=generator)
        x_new, y_new = x.clone(), y.clone()
        x_new[idx] = self.trigger(x[idx])
        if self.mode == "dirty":
            y_new[idx] = self.target
        return TransformedSet(x_new, y_new, replaced=idx, info={"target": self.target, "mode": self.mode,
                                                                "n_poisoned": len(idx)})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trigger": self.trigger.to_dict(), "rate": self.rate, "target": self.target,
                "mode": self.mode}


def attack_success_rate(model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, *, target: int,
                        batch_size: int = 500) -> float:
    """The fraction of triggered inputs with ``y != target`` that ``model`` assigns to ``target``.

    Args:
        model: the classifier (its train/eval mode is restored).
        x, y: clean test inputs and their true labels.
        trigger: the trigger stamped on them.
        target: the target class.
        batch_size: inputs per forward pass.

    Returns:
        ASR in ``[0, 1]``.

    Raises:
        ValueError: no test input has a label other than ``target``.
    """
    keep = y != target
    if not bool(keep.any()):
        raise ValueError(f"no test input has a label other than the target {target}: ASR is undefined")
    pred = predict(model, trigger(x[keep]), batch_size=batch_size)
    return float((pred == target).float().mean())


def backdoor_metrics(model: nn.Module, clean_model: nn.Module, x: Tensor, y: Tensor, trigger: Trigger, *,
                     target: int, batch_size: int = 500) -> dict[str, float]:
    """ASR and clean accuracy of ``model`` next to those of ``clean_model`` (the baseline, POI-04).

    Returns:
        ``{"asr", "clean_acc", "baseline_asr", "baseline_clean_acc", "n_asr", "n_clean"}``.
    """
    def acc(m: nn.Module) -> float:
        return float((predict(m, x, batch_size=batch_size) == y).float().mean())

    return {"asr": attack_success_rate(model, x, y, trigger, target=target, batch_size=batch_size),
            "clean_acc": acc(model),
            "baseline_asr": attack_success_rate(clean_model, x, y, trigger, target=target, batch_size=batch_size),
            "baseline_clean_acc": acc(clean_model), "n_asr": int((y != target).sum()), "n_clean": len(y)}
