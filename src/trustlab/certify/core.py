"""``certify``: a certificate per example from any bound method; ``margin_bounds``: the differentiable bounds.

Both take ``(model, x, y, threat)`` and a method (a name of :data:`~trustlab.certify.METHODS` or a configuration)
and bound the margins ``f_y - f_j`` over ``{||x' - x||_p <= eps} ∩ [lower, upper]^d`` through the specification
matrix :func:`~trustlab.certify.spec.margin_spec`. The model is converted to a network first, so unsupported
layers fail before any bound is computed (CERT-08).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from trustlab.attacks.base import threat_dict
from trustlab.certify.network import Network, to_network
from trustlab.certify.registry import Method, resolve_method
from trustlab.certify.result import Certificate, Verdict
from trustlab.certify.solver import SolverMethod
from trustlab.certify.spec import margin_spec, other_classes
from trustlab.errors import NumericalError, UnsupportedLayerError
from trustlab.threat import LpBall
from trustlab.validation import check_inputs, check_labels, check_nonneg_float, check_positive_int

__all__ = ["certify", "margin_bounds", "MARGIN_TOL", "DEFAULT_BATCH_SIZE"]

MARGIN_TOL = 1e-5  # a certificate needs every margin lower bound above this (float32 rounding is not modelled)
DEFAULT_BATCH_SIZE = 256
_SOUNDNESS_RTOL = 1e-3  # a bound above the margin at x itself (a point of the set) by more than this is a bug


def certify(model: nn.Module | Network, x: Tensor, y: Tensor, threat: LpBall, *, method: str | Method = "crown",
            batch_size: int = DEFAULT_BATCH_SIZE, margin_tol: float = MARGIN_TOL) -> list[Certificate]:
    """Certify each example against every other class with a bound method.

    Verdicts: CERTIFIED when the lower bound of every margin ``f_y - f_j`` exceeds ``margin_tol``; FALSIFIED when
    the plain model misclassifies the clean input (a point of the threat set, returned as the counterexample);
    otherwise UNKNOWN (a bound method proves nothing more).

    Args:
        model: an eval-mode model mapping ``(N, *D)`` to logits ``(N, K)``, or a :class:`Network`.
        x: clean inputs in ``[threat.lower, threat.upper]``, ``(N, *D)``; not modified.
        y: true labels ``(N,)``.
        threat: the l_inf or l_2 ball and the input box, in pixel space.
        method: ``"ibp"``, ``"crown-ibp"``, ``"crown"``, ``"alpha-crown"``, ``"lp"``, ``"milp"``, ``"sdp"`` or a
            configuration such as ``AlphaCROWN(steps=50)`` or ``MILP(time_limit=60)``. The solver methods
            (:class:`~trustlab.certify.solver.SolverMethod`) work one example at a time, give UNKNOWN for any
            solver status other than optimal, and the MILP also FALSIFIED with a counterexample found inside the
            threat set.
        batch_size: examples bounded together (``>= 1``); bounds do not depend on it (CERT-10).
        margin_tol: the margin a certificate needs, ``>= 0``.

    Returns:
        One :class:`Certificate` per example, in order.

    Raises:
        UnsupportedLayerError: the model has layers the method cannot bound, all listed, before any bound.
        NumericalError: a margin bound exceeds the margin at ``x`` itself (an unsound bound: a bug).
        TypeError, ValueError: invalid arguments.

    Shapes:
        x (N, *D), y (N,) -> N certificates.

    Guarantee:
        CERTIFIED implies ``argmax_k f_k(x') = y`` for every ``x'`` in the threat set, up to floating-point
        rounding in the bound computation.
    """
    config = resolve_method(method)
    batch_size = check_positive_int(batch_size, "batch_size")
    margin_tol = check_nonneg_float(margin_tol, "margin_tol")
    network = _prepare(model, x, y, threat)
    settings = {**config.settings(), **threat_dict(threat), "margin_tol": margin_tol}
    out: list[Certificate] = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].detach(), y[start : start + batch_size]
            tic = time.perf_counter()
            logits = _plain_logits(model, network, xb)
            if isinstance(config, SolverMethod):
                found = config.certificates(model, network, xb, yb, threat, logits=logits, margin_tol=margin_tol,
                                            start=start, settings=settings)
                lower = torch.tensor([c.margin_lower for c in found], dtype=logits.dtype)
                _check_sound(lower.to(logits.device), logits, yb, where=start)
                out += found
                continue
            lower = config.bounds(network, xb, threat, spec=margin_spec(yb, network.num_classes, dtype=xb.dtype)).lower
            seconds = (time.perf_counter() - tic) / len(xb)
            _check_sound(lower, logits, yb, where=start)
            out += _certificates(xb, yb, logits, lower, start=start, config=config, settings=settings,
                                 seconds=seconds)
    return out


def margin_bounds(model: nn.Module | Network, x: Tensor, y: Tensor, threat: LpBall, *,
                  method: str | Method = "crown-ibp") -> Tensor:
    """Lower bounds of the margins ``f_y(x') - f_j(x')`` over the threat set, differentiable in the weights.

    Column ``y_n`` of row ``n`` is 0 (the margin to itself), so ``cross_entropy(-margin_bounds(...), y)`` is the
    verified loss of Wong & Kolter (2018) and Gowal et al. (2018) for certified training.

    Args:
        model: an eval-mode model or a :class:`Network` (build one with :func:`to_network` to trace once).
        x: inputs in the box, ``(N, *D)``.
        y: labels ``(N,)``.
        threat: the l_inf or l_2 ball and the input box.
        method: a name of :data:`METHODS` or a configuration.

    Returns:
        ``(N, K)`` lower bounds; gradients flow to the model's parameters.

    Raises:
        UnsupportedLayerError, TypeError, ValueError: as :func:`certify`.

    Shapes:
        x (N, *D), y (N,) -> (N, K).
    """
    config = resolve_method(method)
    network = _prepare(model, x, y, threat)
    k = network.num_classes
    lower = config.bounds(network, x, threat, spec=margin_spec(y, k, dtype=x.dtype)).lower  # (N, K - 1)
    out = lower.new_zeros(len(x), k)
    return out.scatter(1, other_classes(y, k), lower)


def _prepare(model: nn.Module | Network, x: Tensor, y: Tensor, threat: LpBall) -> Network:
    """Validate the arguments and convert the model (raising for unsupported layers before any bound)."""
    if not isinstance(threat, LpBall):
        raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
    if not isinstance(model, (nn.Module, Network)):
        raise TypeError(f"model must be a torch.nn.Module or a certify.Network, got {type(model).__name__}")
    check_inputs(x, lower=threat.lower, upper=threat.upper)
    check_labels(y, len(x))
    if y.device != x.device:
        raise ValueError(f"y must be on the device of x ({x.device}), got {y.device}")
    network = to_network(model, x)
    check_labels(y, len(x), network.num_classes)
    return network


def _plain_logits(model: nn.Module | Network, network: Network, x: Tensor) -> Tensor:
    """The model's own logits on ``x``, checked against the network (tracing may have frozen a data branch)."""
    logits = model(x) if isinstance(model, nn.Module) else network.forward(x)
    got = network.forward(x)
    err = float((logits - got).abs().max())
    if not math.isfinite(err) or err > 1e-4 * (1.0 + float(logits.abs().max())):
        raise UnsupportedLayerError(f"the traced network differs from the model by {err:.3g} on x; the forward may "
                                    "branch on data, which tracing cannot follow", ops=("data-dependent forward",))
    return logits


def _check_sound(lower: Tensor, logits: Tensor, y: Tensor, *, where: int) -> None:
    """Every margin lower bound must be at most the margin at ``x`` itself, which lies in the threat set."""
    k = logits.shape[1]
    margins = logits.gather(1, y.unsqueeze(1)) - logits.gather(1, other_classes(y, k))  # (N, K - 1)
    excess = lower - margins - _SOUNDNESS_RTOL * (1.0 + margins.abs())
    if bool((excess > 0).any()):
        n = int((excess > 0).any(1).nonzero()[0, 0])
        raise NumericalError(f"margin lower bound {lower[n].min().item():.6g} exceeds the margin at x itself "
                             f"({margins[n].min().item():.6g}) for example {where + n}: the bound is unsound")


def _certificates(x: Tensor, y: Tensor, logits: Tensor, lower: Tensor, *, start: int, config: Method,
                  settings: dict, seconds: float) -> list[Certificate]:
    k = logits.shape[1]
    wrong = logits.argmax(1) != y
    certified = (lower > settings["margin_tol"]).all(1) & ~wrong
    classes = other_classes(y, k).tolist()
    rows = lower.tolist()
    out = []
    for i in range(len(x)):
        verdict = Verdict.FALSIFIED if wrong[i] else Verdict.CERTIFIED if certified[i] else Verdict.UNKNOWN
        out.append(Certificate(index=start + i, label=int(y[i]), verdict=verdict, classes=tuple(classes[i]),
                               margin_lower=tuple(rows[i]), method=config.name, settings=dict(settings),
                               seconds=seconds, counterexample=x[i].clone() if wrong[i] else None))
    return out
