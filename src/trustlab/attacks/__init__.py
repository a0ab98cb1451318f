"""Adversarial attacks: functions (the algorithms) and frozen dataclasses (their configurations).

``fgsm``, ``pgd``, ``apgd``, ``apgd_targeted``, ``fab`` and ``fab_targeted`` (minimum-norm, reported for the
threat's ``eps``) work on any differentiable classifier; ``square`` needs only the model's outputs (no gradients,
a budget of queries); ``linear_attack`` is the closed-form worst case of a linear one. ``EOT`` (randomized models)
and ``BPDA`` (non-differentiable preprocessing) wrap the model so that every gradient attack sees through them.
``ensemble`` runs attacks in sequence on the points still robust and keeps each example's first success
(``Ensemble``: AutoAttack's fixed ``standard`` and ``rand`` versions). Every attack takes ``(model, x, y, threat)``
with an :class:`trustlab.LpBall` threat, returns ``x_adv`` of the shape, dtype and device of ``x``, never mutates
its inputs or the model, and takes its randomness from a ``generator``. ``attack_batched`` runs a configured
attack over many examples and clips the result into the threat model itself.
"""

from __future__ import annotations

from trustlab.attacks.apgd import APGD, APGDT, apgd, apgd_targeted, checkpoints
from trustlab.attacks.base import eval_mode
from trustlab.attacks.ensemble import VERSIONS, Ensemble, EnsembleLog, ensemble, ensemble_with_log
from trustlab.attacks.evaluate import attack_batched, clean_accuracy, predict, predict_proba
from trustlab.attacks.fab import FAB, FABT, boundary_projection, fab, fab_targeted
from trustlab.attacks.fgsm import FGSM, fgsm
from trustlab.attacks.fgsm_rs import FGSMRS, fgsm_rs
from trustlab.attacks.linear import Linear, linear_attack
from trustlab.attacks.losses import (
    LOSSES,
    TARGETED_LOSSES,
    cross_entropy,
    dlr,
    dlr_targeted,
    get_loss,
    is_adversarial,
    margin,
    objective,
)
from trustlab.attacks.pgd import PGD, default_step_size, pgd
from trustlab.attacks.registry import ATTACKS, Attack, build_attack
from trustlab.attacks.square import Square, SquareResult, p_schedule, side_length, square, square_with_queries
from trustlab.attacks.wrappers import BPDA, EOT, EOTAttack, bpda_split, through_bpda

__all__ = [
    "fgsm",
    "bpda_split",
    "through_bpda",
    "fgsm_rs",
    "FGSMRS",
    "pgd",
    "apgd",
    "apgd_targeted",
    "checkpoints",
    "square",
    "square_with_queries",
    "SquareResult",
    "p_schedule",
    "side_length",
    "fab",
    "fab_targeted",
    "boundary_projection",
    "linear_attack",
    "FGSM",
    "PGD",
    "APGD",
    "APGDT",
    "Square",
    "FAB",
    "FABT",
    "Linear",
    "ATTACKS",
    "Attack",
    "build_attack",
    "cross_entropy",
    "margin",
    "dlr",
    "dlr_targeted",
    "LOSSES",
    "TARGETED_LOSSES",
    "get_loss",
    "objective",
    "is_adversarial",
    "default_step_size",
    "predict",
    "predict_proba",
    "clean_accuracy",
    "attack_batched",
    "eval_mode",
    "EOT",
    "BPDA",
    "EOTAttack",
    "ensemble",
    "ensemble_with_log",
    "Ensemble",
    "EnsembleLog",
    "VERSIONS",
]
