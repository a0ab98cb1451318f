"""An ensemble of attacks run in sequence on the points still robust, keeping each example's first success:
AutoAttack's fixed, versioned compositions (``standard``, ``rand``)."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from trustlab.attacks.apgd import APGD, APGDT
from trustlab.attacks.base import (
    PROBABILITIES_WARNING,
    check_attack_args,
    check_model,
    check_threat,
    eval_mode,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.evaluate import predict
from trustlab.attacks.fab import FABT
from trustlab.attacks.pgd import DEFAULT_SEED
from trustlab.attacks.square import Square
from trustlab.attacks.wrappers import EOTAttack
from trustlab.threat import LpBall

__all__ = ["ensemble", "ensemble_with_log", "Ensemble", "EnsembleLog", "VERSIONS", "version_members"]

# a version's members never change under its tag; a change of composition or budget is a new tag
VERSIONS = {"standard": "standard-v1", "rand": "rand-v1"}
CUSTOM = "custom"  # the version of an ensemble given its own members


class EnsembleLog(NamedTuple):
    """What :func:`ensemble_with_log` returns: the worst case per example and who found it."""

    x_adv: Tensor  # (N, *D): the first successful member's output, else x itself
    correct: Tensor  # (N,) bool: clean x classified correctly (only those are attacked)
    attacked: Tensor  # (M, N) bool: member j ran on example i (i was still robust before j)
    broken: Tensor  # (M, N) bool: member j broke example i; at most one True per column
    seconds: tuple[float, ...]  # (M,) wall time of each member


def ensemble(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    attacks: Sequence[Any],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run ``attacks`` in sequence, each on the examples no earlier one broke; per example keep the first
    successful ``x_adv`` (the worst case over the members), else ``x``.

    Success is decided here, not by the members: a member's output is clipped into the threat (ball and box)
    and counts as a success iff ``argmax f(x_adv) != y``. Examples the model misclassifies clean are never
    attacked. Hence, per example, the ensemble breaks every example a member breaks on the points handed to
    it: it is never weaker than any member run on those points.

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``; run in eval mode (warned once if it is not), mode restored.
        x: clean inputs inside the threat's box; not modified.
        y: true labels ``(N,)``.
        threat: the perturbation set; every member must have this threat.
        attacks: configured attacks (``APGD``, ``Square``, ...), run in this order.
        generator: shared by the members in order; ``None`` uses one seeded with ``DEFAULT_SEED`` (0).

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``, inside the ball and the box.

    Raises:
        TypeError, ValueError: invalid arguments, no members, or a member with another threat.

    Shapes:
        x (N, *D), y (N,) -> x_adv (N, *D).

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
        attacks", ICML 2020, arXiv:2003.01690, Sec. 5 (the ensemble; the worst case over the attacks per point).
    """
    return ensemble_with_log(model, x, y, threat, attacks=attacks, generator=generator).x_adv


def ensemble_with_log(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    attacks: Sequence[Any],
    generator: torch.Generator | None = None,
) -> EnsembleLog:
    """:func:`ensemble`, also returning which examples each member ran on and broke, and its time.
    Arguments and errors as there.

    Shapes:
        x (N, *D), y (N,) -> x_adv (N, *D), correct (N,), attacked (M, N), broken (M, N).
    """
    check_model(model)
    check_attack_args(x, y, threat)
    attacks = _check_members(attacks, threat)
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    x_adv = x.clone()
    attacked = torch.zeros(len(attacks), len(x), dtype=torch.bool, device=x.device)
    broken = torch.zeros_like(attacked)
    seconds = []
    with eval_mode(model), warnings.catch_warnings():
        correct = predict(model, x) == y
        robust = correct.clone()
        for j, attack in enumerate(attacks):
            t0 = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            if len(idx):
                out = threat.project(attack(model, x[idx], y[idx], generator=generator).detach().to(x.dtype), x[idx])
                hit = predict(model, out) != y[idx]
                x_adv[idx[hit]] = out[hit]
                attacked[j, idx], broken[j, idx[hit]], robust[idx[hit]] = True, True, False
            seconds.append(time.perf_counter() - t0)
            # the first member warned if the outputs are probabilities: once per ensemble, not per member
            warnings.filterwarnings("ignore", message=re.escape(PROBABILITIES_WARNING), category=UserWarning)
    return EnsembleLog(x_adv, correct, attacked, broken, tuple(seconds))


def _check_members(attacks: object, threat: LpBall) -> tuple[Any, ...]:
    """``attacks`` must be a non-empty sequence of configured attacks, each with exactly ``threat``."""
    if isinstance(attacks, (str, bytes)) or not isinstance(attacks, Sequence):
        raise TypeError(f"attacks must be a sequence of configured attacks, got {type(attacks).__name__}")
    if len(attacks) == 0:
        raise ValueError("attacks must hold at least one configured attack, got none")
    for j, a in enumerate(attacks):
        if not callable(a) or not isinstance(getattr(a, "threat", None), LpBall):
            raise TypeError(f"attacks[{j}] must be a configured attack with an LpBall `threat`, got {type(a).__name__}")
        if a.threat != threat:
            raise ValueError(f"attacks[{j}] ({type(a).__name__}) has threat {a.threat}, not the ensemble's {threat}")
    return tuple(attacks)


def version_members(version: str, threat: LpBall) -> tuple[Any, ...]:
    """The fixed members of a version, in their order (see :class:`Ensemble`).

    Raises:
        ValueError: an unknown version.
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {sorted(VERSIONS)}, got {version!r}")
    if version == "rand":
        return (EOTAttack(APGD(threat, steps=100, restarts=1, loss="ce"), samples=20),
                EOTAttack(APGD(threat, steps=100, restarts=1, loss="dlr"), samples=20))
    return (APGD(threat, steps=100, restarts=1, loss="ce"),
            APGDT(threat, steps=100, n_target_classes=9, restarts=1, loss="dlr-targeted"),
            FABT(threat, steps=100, n_target_classes=9, restarts=1),
            Square(threat, queries=5000, p_init=0.8, loss="margin"))


@dataclass(frozen=True)
class Ensemble:
    """Configuration of :func:`ensemble` for the CLI and run records (holds no model).

    Versions are fixed: a tag names one composition and its budgets forever (``to_dict`` writes the tag).

    - ``standard`` (``standard-v1``), AutoAttack's standard version (Croce & Hein 2020, Sec. 5): APGD-CE
      (100 steps, 1 restart), APGD-T (targeted DLR, 100 steps, 9 target classes, 1 restart), FAB-T (100 steps,
      9 target classes, 1 restart) and Square (5,000 queries, ``p_init`` 0.8), for ``p = inf`` and ``p = 2``
      alike (Square's update follows the threat's norm).
    - ``rand`` (``rand-v1``), for randomized models: APGD-CE and APGD-DLR (100 steps, 1 restart each) on
      ``EOT(model, samples=20)`` (expectation over 20 draws, of the logits; see :class:`trustlab.attacks.EOT`).
    - ``custom``: exactly the given ``members`` (for tests and studies; the record lists them in full).

    Attributes:
        threat: the threat model, shared by every member.
        version: ``"standard"``, ``"rand"`` or ``"custom"``.
        members: with ``version="custom"`` only, the configured attacks in order; empty otherwise.
    """

    threat: LpBall
    version: str = "standard"
    members: tuple[Any, ...] = ()

    name: ClassVar[str] = "ensemble"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        if self.version == CUSTOM:
            object.__setattr__(self, "members", _check_members(self.members, self.threat))
        elif self.members:
            raise ValueError(f"members are fixed by version {self.version!r}; pass version='custom' to give your own")
        else:
            version_members(self.version, self.threat)  # an unknown version fails here

    def attacks(self) -> tuple[Any, ...]:
        """The configured members, in the order they run."""
        return self.members if self.version == CUSTOM else version_members(self.version, self.threat)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`ensemble` with this configuration; it is untargeted, so ``y_target`` must be ``None``."""
        if y_target is not None:
            raise ValueError("the ensemble is untargeted (its targeted members pick their own targets); "
                             "y_target must be None")
        return ensemble(model, x, y, self.threat, attacks=self.attacks(), generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """The version tag and every member's full record, in order, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "version": VERSIONS.get(self.version, CUSTOM),
            "members": [a.to_dict() for a in self.attacks()],
        }
