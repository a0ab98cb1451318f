"""Attacks by name, for the CLI, config files and the contract test suite."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Union

from trustlab.attacks.apgd import APGD, APGDT
from trustlab.attacks.ensemble import Ensemble
from trustlab.attacks.fab import FAB, FABT
from trustlab.attacks.fgsm import FGSM
from trustlab.attacks.fgsm_rs import FGSMRS
from trustlab.attacks.linear import Linear
from trustlab.attacks.pgd import PGD
from trustlab.attacks.square import Square
from trustlab.threat import LpBall

__all__ = ["ATTACKS", "Attack", "build_attack"]

Attack = Union[FGSM, FGSMRS, PGD, Linear, APGD, APGDT, Square, FAB, FABT, Ensemble]

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM, "fgsm-rs": FGSMRS, "pgd": PGD, "linear": Linear, "apgd": APGD, "apgd-t": APGDT, "square": Square,
    "fab": FAB, "fab-t": FABT, "ensemble": Ensemble,
}


def build_attack(name: str, threat: LpBall, **params: Any) -> Attack:
    """The attack configuration ``ATTACKS[name](threat, **params)``, validated.

    Raises:
        ValueError: an unknown ``name`` or parameter (the message lists the valid ones), or an invalid value.
        TypeError: a value of the wrong type.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    valid = [f.name for f in fields(cls) if f.name != "threat"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for attack {name!r}; valid: {valid}")
    return cls(threat, **params)
