"""The shape every training defense takes: a frozen configuration that computes the batch loss.

A defense is a frozen dataclass registered under a name (``@register_defense``). Its fields are its own settings
(TOML ``[train.defense]`` table, or keys prefixed by its name such as ``pgd_steps``; CLI flags ``--pgd-steps``).
Bound to the epoch's threat it becomes an :class:`Objective`, ``(model, x, y, *, generator) -> (loss, logits)``:
the loop only descends on the loss, so ERM, adversarial training, TRADES, certified or noise training all fit.
Each defense also chooses the validation metric that the per-epoch check measures and that ``keep_best``
selects on.

Two optional hooks serve defenses with a schedule of their own (certified training): :meth:`Defense.initialize`
re-initializes a new run's weights before its first step, and ``ramp_per_step = True`` asks the loop to ramp eps
(and call :meth:`Defense.scaled`) at every batch of the eps warm-up instead of once per epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from trustlab.attacks import clean_accuracy, pgd
from trustlab.attacks.base import eval_mode
from trustlab.threat import LpBall

__all__ = ["Defense", "Objective", "DEFENSES", "register_defense", "build_defense", "defense_names",
           "option_prefix", "robust_check", "ROBUST_CHECK_STEPS"]

ROBUST_CHECK_STEPS = 10  # PGD-10 at the epoch's eps: the catastrophic-overfitting check of Wong et al. 2020


@dataclass(frozen=True)
class Defense:
    """Base of every training defense configuration (subclass it as a frozen dataclass and register it).

    Class attributes:
        name: the registry name (``"pgd"``).
        adversarial: whether the defense trains against the threat (needs ``eps > 0``).
        selection_metric: the key of :meth:`validate`'s result that ``keep_best`` maximizes, or ``None``.
        ramp_per_step: during the eps warm-up, ramp eps linearly per batch (``True``) rather than per epoch
            (``False``, a staircase whose step is the epoch); both reach ``(e + 1) / W`` of eps at the end of
            epoch ``e`` of a ``W``-epoch warm-up.
        reads_layers: the defense reads the model's layers, not only its outputs (certified bounds trace the
            network), so it needs the plain float32 model: bf16, channels-last and ``torch.compile``
            (:mod:`trustlab.compute`) are refused for it.
    """

    name: ClassVar[str] = ""
    adversarial: ClassVar[bool] = True
    selection_metric: ClassVar[str | None] = "val_pgd_acc"
    ramp_per_step: ClassVar[bool] = False
    reads_layers: ClassVar[bool] = False

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The batch loss to descend on and the logits it was computed on; ``model`` is in train mode."""
        raise NotImplementedError

    def scaled(self, ramp: float) -> "Defense":
        """This defense during an eps warm-up at ``ramp`` (0..1] of the full eps: a ``step_size`` given for the
        full eps shrinks with it, so the ratio step / eps the recipe chose holds at every epoch."""
        step = getattr(self, "step_size", None)
        return self if step is None or ramp == 1.0 else dataclasses.replace(self, step_size=step * ramp)

    def initialize(self, model: nn.Module, *, generator: torch.Generator) -> None:
        """Re-initialize a new run's freshly built ``model`` in place before its first step (default: nothing).
        Not called on a resume, whose weights come from the checkpoint."""

    def objective(self, threat: LpBall) -> "Objective":
        """This defense bound to ``threat``."""
        return Objective(self, threat)

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall, generator: torch.Generator,
                 batch_size: int) -> dict[str, float]:
        """The per-epoch validation metrics beyond clean accuracy (default: PGD-10 accuracy at ``threat``)."""
        return robust_check(model, x, y, threat=threat, generator=generator, batch_size=batch_size)

    def options(self) -> dict[str, Any]:
        """The defense's own settings."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}`` for config.json."""
        return {"name": self.name, **self.options()}


@dataclass(frozen=True)
class Objective:
    """A defense bound to the epoch's threat: ``(model, x, y, *, generator) -> (loss, logits)``."""

    defense: Defense
    threat: LpBall

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.defense.loss(model, x, y, threat=self.threat, generator=generator)


def robust_check(model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall, generator: torch.Generator,
                 batch_size: int) -> dict[str, float]:
    """PGD-10 accuracy at ``threat`` (``val_pgd_acc``): training accuracy on the inner attack far above it means
    the model has learned to fool that attack, not to resist the threat (Wong et al. 2020, Sec. 5.3)."""
    with eval_mode(model):
        x_adv = pgd(model, x, y, threat, steps=ROBUST_CHECK_STEPS, generator=generator)
    return {"val_pgd_acc": clean_accuracy(model, x_adv, y, batch_size=batch_size)}


D = TypeVar("D", bound=type[Defense])
DEFENSES: dict[str, type[Defense]] = {}


def register_defense(cls: D) -> D:
    """Class decorator: add a frozen :class:`Defense` subclass to :data:`DEFENSES` under ``cls.name``.

    Raises:
        ValueError: no name, or the name is taken by another class.
    """
    if not cls.name:
        raise ValueError(f"defense class {cls.__name__} has no name")
    if DEFENSES.get(cls.name, cls) is not cls:
        raise ValueError(f"defense name {cls.name!r} is already registered by {DEFENSES[cls.name].__name__}")
    DEFENSES[cls.name] = cls
    return cls


def defense_names() -> list[str]:
    return list(DEFENSES)


def option_prefix(name: str) -> str:
    """The prefix of a defense's flat config keys: ``"fgsm-rs"`` -> ``"fgsm_rs_"``."""
    return name.replace("-", "_") + "_"


def build_defense(spec: str | Mapping[str, Any] | Defense, **options: Any) -> Defense:
    """A defense from its name and options, a ``{"name": ..., **options}`` mapping, or a defense itself.

    Raises:
        ValueError: an unknown name or option (the message lists the valid ones), or an invalid value.
    """
    if isinstance(spec, Defense):
        if options:
            return dataclasses.replace(spec, **options)
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise ValueError(f"a defense table needs a name, e.g. name = \"pgd\"; got keys {sorted(spec)}")
        name = spec.pop("name")
        options = {**spec, **options}
    else:
        name = spec
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of {defense_names()}")
    cls = DEFENSES[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for defense {name!r}; valid: {valid}")
    return cls(**options)


def split_prefixed(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split flat config keys into plain keys and per-defense options (``pgd_steps`` -> ``{"pgd": {"steps"}}``).

    The longest matching prefix wins (``fgsm_rs_step_size`` belongs to ``fgsm-rs``, not ``fgsm``); a prefixed key
    that is not an option of its defense stays plain, so the caller's unknown-key check names it.
    """
    plain: dict[str, Any] = {}
    by_defense: dict[str, dict[str, Any]] = {}
    names = sorted(DEFENSES, key=lambda n: -len(option_prefix(n)))
    for key, value in values.items():
        owner = next((n for n in names if key.startswith(option_prefix(n))
                      and key[len(option_prefix(n)):] in {f.name for f in fields(DEFENSES[n])}), None)
        if owner is None:
            plain[key] = value
        else:
            by_defense.setdefault(owner, {})[key[len(option_prefix(owner)):]] = value
    return plain, by_defense


Check = Callable[..., dict[str, float]]
