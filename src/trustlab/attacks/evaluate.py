"""Prediction and batched attacks, with the framework (not the attack) enforcing the threat model (EVAL-02)."""

from __future__ import annotations

import re
import warnings
from typing import Protocol

import torch
from torch import Tensor, nn

from trustlab.attacks.base import (
    PROBABILITIES_WARNING,
    check_attack_args,
    check_model,
    eval_mode,
    warn_if_training,
)
from trustlab.errors import NumericalError
from trustlab.threat import LpBall
from trustlab.validation import check_inputs, check_positive_int

__all__ = ["predict", "predict_proba", "clean_accuracy", "attack_batched", "AttackFn"]


class AttackFn(Protocol):
    """What :func:`attack_batched` runs: a configured attack (``FGSM``, ``PGD``, ``Linear``, ...)."""

    threat: LpBall

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


def predict(model: nn.Module, x: Tensor, *, batch_size: int = 1000) -> Tensor:
    """Predicted classes ``argmax_k f(x)_k``, in eval mode under ``torch.no_grad``; the model's mode is restored.

    Shapes:
        x (N, *D) -> (N,) int64 on the device of the logits.
    """
    check_model(model)
    check_inputs(x, lower=None, upper=None)
    check_positive_int(batch_size, "batch_size")
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])


def predict_proba(model: nn.Module, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """Softmax probabilities ``(N, K)`` in eval mode under ``torch.no_grad``; the model's mode is restored.

    Raises:
        NumericalError: the model's output holds NaN or Inf.
    """
    check_model(model)
    check_positive_int(batch_size, "batch_size")
    with eval_mode(model), torch.no_grad():
        probs = torch.cat([torch.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])
    if not torch.isfinite(probs).all():
        raise NumericalError("model output contains NaN or Inf")
    return probs


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (the model's; :func:`trustlab.reports.metrics.accuracy` reads
    records instead).

    Raises:
        ValueError: ``x`` is empty.
    """
    if len(x) == 0:
        raise ValueError("dataset is empty: cannot compute accuracy on 0 examples")
    return float((predict_proba(model, x, batch_size=batch_size).argmax(1) == y).float().mean())


def attack_batched(
    attack: AttackFn,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    y_target: Tensor | None = None,
) -> Tensor:
    """Run ``attack`` on ``x`` in batches, then clip every result into ``attack.threat`` (ball and box) again.

    The clipping is the framework's guarantee, whatever the attack returns ("clip to epsilon because we don't
    really know what the attack returns", foolbox ``attacks/base.py``). Success is then for the caller to
    recompute from ``x_adv`` (e.g. ``predict(model, x_adv) != y``). One ``generator`` is shared by the batches in
    order, so a run is reproducible for a fixed ``batch_size``.

    Args:
        attack: a configured attack with a ``threat`` (an :class:`LpBall`).
        model: the classifier, returning logits (warned once if its outputs are probabilities); run in eval mode
            (warned once if it is not), its mode restored.
        x: clean inputs inside the threat's box; not modified.
        y: true labels ``(N,)``.
        batch_size: examples per attack call (``>= 1``); the last batch may be smaller.
        generator: passed to every call of the attack.
        y_target: optional targets ``(N,)``, sliced like ``y``.

    Returns:
        ``x_adv`` ``(N, *D)``, same dtype and device as ``x``, inside the ball around ``x`` and the box.

    Raises:
        TypeError, ValueError: invalid arguments, or an attack output of the wrong shape.
        NumericalError: the attack returned NaN or Inf.
    """
    threat = getattr(attack, "threat", None)
    if not callable(attack) or not isinstance(threat, LpBall):
        raise TypeError(f"attack must be a configured attack with an LpBall `threat`, got {type(attack).__name__}")
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    check_positive_int(batch_size, "batch_size")
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    x_adv = torch.empty_like(x)
    with eval_mode(model), warnings.catch_warnings():
        for i in range(0, len(x), batch_size):
            s = slice(i, i + batch_size)
            y_t = None if y_target is None else y_target[s]
            out = attack(model, x[s], y[s], y_target=y_t, generator=generator)
            # The first batch warned if the outputs are probabilities (INP-15): once per call, not per batch.
            warnings.filterwarnings("ignore", message=re.escape(PROBABILITIES_WARNING), category=UserWarning)
            if not isinstance(out, Tensor) or out.shape != x[s].shape:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"attack returned {shape} for a batch of shape {tuple(x[s].shape)}")
            if not torch.isfinite(out).all():
                raise NumericalError(f"attack returned NaN or Inf for examples {i}..{i + len(out) - 1}")
            x_adv[s] = threat.project(out.detach().to(x.dtype), x[s])
    return x_adv
