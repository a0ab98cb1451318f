"""What every attack does at its entry: validate the arguments and run the model in eval mode.

Bad input fails here, before any computation, with a message naming the value (reliability-tests INP-01..09);
the model's train/eval mode is switched for the attack and restored afterwards, module by module (EVAL-15).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from trustlab.attacks.losses import objective
from trustlab.errors import NumericalError
from trustlab.threat import LpBall
from trustlab.validation import check_inputs, check_labels, check_nonneg_float, check_positive_int

__all__ = [
    "check_threat",
    "check_model",
    "check_attack_args",
    "check_logits",
    "check_steps",
    "check_step_size",
    "check_restarts",
    "check_bool",
    "check_finite",
    "first_forward",
    "eval_mode",
    "warn_if_training",
    "warn_if_probabilities",
    "threat_dict",
    "input_gradient",
]


def check_threat(threat: object) -> LpBall:
    """Return ``threat`` if it is an :class:`LpBall` (which validated eps and p itself), else raise."""
    if not isinstance(threat, LpBall):
        raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
    return threat


def check_model(model: object) -> nn.Module:
    """Return ``model`` if it is an ``nn.Module`` (needed to switch and restore its mode), else raise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_steps(steps: object) -> int:
    """``steps`` must be an int ``>= 0``."""
    return check_positive_int(steps, "steps", minimum=0)


def check_step_size(step_size: object) -> float | None:
    """``step_size`` must be ``None`` (use the default) or a finite number ``> 0``."""
    return None if step_size is None else check_nonneg_float(step_size, "step_size", positive=True)


def check_restarts(restarts: object) -> int:
    """``restarts`` must be an int ``>= 1``."""
    return check_positive_int(restarts, "restarts", minimum=1)


def check_bool(value: object, name: str) -> bool:
    """``value`` must be a bool (a string such as ``"no"`` would silently count as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_attack_args(x: Tensor, y: Tensor, threat: LpBall, y_target: Tensor | None = None) -> None:
    """Checks that need no forward pass: x in the box, label shapes, targets distinct from labels (INP-03..09)."""
    check_threat(threat)
    check_inputs(x, lower=threat.lower, upper=threat.upper)
    check_labels(y, len(x))
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    if y_target is not None:
        check_labels(y_target, len(x), name="y_target")
        if y_target.device != x.device:
            raise ValueError(f"y_target must be on the device of x ({x.device}), got {y_target.device}")
        same = (y_target == y).nonzero()
        if len(same):
            i = int(same[0, 0])
            raise ValueError(f"y_target equals the true label y for example {i} (both {int(y[i])}); they must differ")
    width = None if threat.lower is None or threat.upper is None else threat.upper - threat.lower
    if threat.p == math.inf and width is not None and threat.eps > width:
        warnings.warn(
            f"eps={threat.eps} exceeds the input range [{threat.lower}, {threat.upper}]; the attack is unbounded",
            stacklevel=3,
        )


def check_logits(logits: Tensor, y: Tensor, y_target: Tensor | None = None) -> int:
    """After the first forward pass: logits are ``(N, K)`` with ``K >= 2`` and labels lie in ``[0, K)``; returns K.

    Warns (once, as this runs once per attack call) if the outputs are probabilities, not logits.
    """
    n = len(y)
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"model must return logits of shape (N={n}, K>=2), got {tuple(logits.shape)}")
    k = logits.shape[1]
    check_labels(y, n, k)
    if y_target is not None:
        check_labels(y_target, n, k, name="y_target")
    warn_if_probabilities(logits)
    return k


PROBABILITIES_WARNING = "the model's outputs look like probabilities"


def warn_if_probabilities(logits: Tensor) -> bool:
    """Warn if every row of the model's output is non-negative and sums to 1 within 1e-4 (INP-15, the EVAL-10
    flag); returns whether it did.

    An attack on a softmax output climbs a loss whose gradient vanishes once the softmax saturates, so it can
    report robustness that is not there (Carlini & Wagner 2017, Sec. 5; Croce & Hein 2020, Sec. 3.1). The
    warning points at the user's call, not at trustlab's frames.
    """
    z = logits.detach().float()
    if not (bool((z >= 0).all()) and bool(((z.sum(dim=1) - 1).abs() <= 1e-4).all())):
        return False
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("trustlab."):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{PROBABILITIES_WARNING} (every row is non-negative and sums to 1): gradients of probabilities saturate, "
        "so the attack can underestimate what a stronger one finds; pass a model that returns logits (drop its "
        "final softmax)",
        UserWarning,
        stacklevel=level,
    )
    return True


def first_forward(model: nn.Module, x: Tensor) -> Tensor:
    """An attack's first forward pass: a model that cannot take ``x`` (shape, channels, dtype) raises a
    ``ValueError`` quoting the shape and dtype of ``x`` (INP-07) instead of a bare torch ``RuntimeError``."""
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:
        raise ValueError(f"model failed on x of shape {tuple(x.shape)} and dtype {x.dtype}: {e}") from e


def check_finite(logits: Tensor, loss: Tensor, where: str) -> None:
    """Raise :class:`NumericalError` naming ``where`` (the step) if logits or loss hold NaN or Inf."""
    if not (torch.isfinite(logits).all() and torch.isfinite(loss).all()):
        raise NumericalError(f"non-finite logits or loss at {where}")


def warn_if_training(model: nn.Module, *, stacklevel: int = 2) -> bool:
    """Warn if any module of ``model`` is in training mode (INP-14); returns whether one was.

    ``stacklevel`` counts from the caller of this function, as for ``warnings.warn``.
    """
    training = any(m.training for m in model.modules())
    if training:
        warnings.warn(
            f"{type(model).__name__} is in training mode; the attack runs it in eval mode and restores the mode "
            "afterwards (call model.eval() to silence this)",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    return training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with ``model.eval()``, then restore every module's own ``training`` flag (mixed modes too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        # pre-order: a parent's train() resets its children, which are fixed right after it
        for m, mode in modes:
            if m.training != mode:
                m.train(mode)


def threat_dict(threat: LpBall) -> dict[str, Any]:
    """The threat model as flat JSON-safe fields for run records (``p`` is ``"inf"`` or ``2.0``, as parse_p reads)."""
    p = "inf" if threat.p == math.inf else threat.p
    return {"eps": threat.eps, "p": p, "lower": threat.lower, "upper": threat.upper}


def input_gradient(
    model: nn.Module, x: Tensor, y: Tensor, *, y_target: Tensor | None, loss: str, where: str, mean: bool = False
) -> Tensor:
    """The gradient of the attack objective at ``x``, from a first forward pass in eval mode with its checks
    (input shape, logits shape and labels, finite values named by ``where``). The objective is summed over the
    batch, or averaged with ``mean`` (the training step of FGSM-RS descends on the mean loss)."""
    with eval_mode(model), torch.enable_grad():  # callers may hold torch.no_grad()
        x_in = x.detach().requires_grad_(True)  # a new tensor object: x itself never requires grad
        logits = first_forward(model, x_in)
        check_logits(logits, y, y_target)
        obj = objective(logits, y, y_target=y_target, loss=loss)
        check_finite(logits, obj, where)
        (grad,) = torch.autograd.grad(obj.mean() if mean else obj.sum(), x_in)
    return grad
