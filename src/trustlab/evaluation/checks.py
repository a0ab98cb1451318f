"""Gradient-masking checks on an evaluation's model and inputs: signs that an attack's number can't be trusted.

Each check is one small function returning a :class:`~trustlab.reports.diagnosis.Flag` (shown by the report like
the record flags) or None; :func:`run_checks` runs them all. A flag is a value, never an exception, and its
message says what to do next. The checks never raise on a healthy model and never change it: forward passes run
in eval mode (as attacks do) with every module's mode restored, the global RNG is forked, and parameter
gradients are put back.

The record-based checks (a gradient-free attack beating the white-box ones, an attack not converged) live in
:mod:`trustlab.reports.diagnosis`, which reports run without a model; :func:`blackbox_beats_whitebox` and
:func:`not_converged` here are the same checks on records at hand.

Reference:
    Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security", arXiv:1802.00420;
    Carlini et al. 2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705, Sec. 5;
    Croce & Hein 2020, AutoAttack (arXiv:2003.01690) ``checks.py``; reliability-tests.md EVAL-09, EVAL-10.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustlab.attacks.base import check_model, check_threat, eval_mode
from trustlab.reports.diagnosis import (
    BLACKBOX_BEATS_WHITEBOX, GRADIENT_FREE, NOT_CONVERGED, Flag, blackbox_beats_whitebox, not_converged,
)
from trustlab.reports.runs import norm_label
from trustlab.threat import LpBall

__all__ = [
    "MODEL_CHECKS", "PROBABILITIES", "RANDOMIZED", "ZERO_GRADIENTS", "INNER_OPTIMIZATION", "FEW_CLASSES_FOR_DLR",
    "TRAINING_MODE", "BLACKBOX_BEATS_WHITEBOX", "NOT_CONVERGED", "GRADIENT_FREE", "PROBABILITY_TOL",
    "RANDOMIZED_PASSES", "RANDOMIZED_TOL", "ZERO_GRADIENT_NORM", "ZERO_GRADIENT_SHARE", "probabilities",
    "randomized", "zero_gradients", "inner_optimization", "few_classes_for_dlr", "training_mode",
    "blackbox_beats_whitebox", "not_converged", "run_checks",
]

PROBABILITIES = "probabilities"
RANDOMIZED = "randomized"
ZERO_GRADIENTS = "zero_gradients"
INNER_OPTIMIZATION = "inner_optimization"
FEW_CLASSES_FOR_DLR = "few_classes_for_dlr"
TRAINING_MODE = "training_mode"

PROBABILITY_TOL = 1e-5  # EVAL-10: max < 1 + tol, min > -tol, rows sum to 1 +- tol
RANDOMIZED_PASSES = 5  # EVAL-10: forward passes compared
RANDOMIZED_TOL = 1e-4  # EVAL-10 (AutoAttack check_randomized): on logits divided by their row's l_2 norm
ZERO_GRADIENT_NORM = 1e-12  # an input gradient whose l_1 norm is at most this counts as zero
ZERO_GRADIENT_SHARE = 0.2  # flag when more than this share of inputs has a zero gradient (EVAL-10 says any: 0.0)
DLR_MIN_CLASSES = {"dlr": 3, "dlr-targeted": 4}  # Croce & Hein 2020, eq. 5 and eq. 7

MODEL_CHECKS: dict[str, str] = {
    TRAINING_MODE: "a module of the model is left in training mode",
    PROBABILITIES: "the model returns probabilities (rows non-negative, summing to 1) instead of logits",
    RANDOMIZED: f"{RANDOMIZED_PASSES} forward passes in eval mode on the same inputs differ",
    ZERO_GRADIENTS: f"the input gradient of the loss is zero on more than {ZERO_GRADIENT_SHARE:.0%} of the inputs",
    INNER_OPTIMIZATION: "the forward pass computes gradients (an optimization loop inside forward)",
    FEW_CLASSES_FOR_DLR: "a DLR loss is used with fewer classes than it needs (3, or 4 targeted)",
}


def _where(threat: LpBall | None) -> dict[str, Any]:
    return {} if threat is None else {"eps": threat.eps, "p": norm_label(threat.p)}


def training_mode(model: nn.Module, *, run: str = "") -> Flag | None:
    """Flag a model with any module in training mode (EVAL-10 ``train_mode``; RobustBench ``eval.py``).

    Attacks and predictions run the model in eval mode anyway, so the evaluation's numbers are not wrong; but a
    model handed over in training mode is often used that way elsewhere (batch-norm statistics drifting, dropout
    on).
    """
    names = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if not names:
        return None
    return Flag(TRAINING_MODE, "warning", run,
                f"{len(names)} module(s) of the model are in training mode ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}); trustlab evaluated it in eval mode: call model.eval() "
                "before saving or using it",
                {"modules": names[:20], "n_modules": len(names)})


def probabilities(model: nn.Module, x: Tensor, *, run: str = "", tol: float = PROBABILITY_TOL) -> Flag | None:
    """Flag a model whose outputs on ``x`` are probabilities: every entry in ``(-tol, 1 + tol)`` and every row
    summing to 1 within ``tol`` (EVAL-10 ``softmax_output``). Gradients of a softmax saturate, so attacks on it
    overestimate robustness (Carlini & Wagner 2017, Sec. 5)."""
    with eval_mode(model), torch.no_grad():
        z = model(x).detach().float()
    if z.dim() != 2 or len(z) == 0:
        return None
    rows_sum_to_one = bool(((z.sum(dim=1) - 1).abs() <= tol).all())
    if not (rows_sum_to_one and float(z.min()) > -tol and float(z.max()) < 1 + tol):
        return None
    return Flag(PROBABILITIES, "error", run,
                f"the model returns probabilities on all {len(z)} inputs checked (rows non-negative, summing to 1): "
                "their gradients vanish once the softmax saturates; pass logits (drop the final softmax)",
                {"n": len(z), "tol": tol})


def randomized(model: nn.Module, x: Tensor, *, run: str = "", passes: int = RANDOMIZED_PASSES,
               tol: float = RANDOMIZED_TOL) -> Flag | None:
    """Flag a model whose ``passes`` forward passes in eval mode on ``x`` differ: a prediction changes, or a
    logit divided by its row's l_2 norm moves by more than ``tol`` (EVAL-10 ``randomized``; AutoAttack
    ``check_randomized``). The passes run on a fork of the global RNG, which is left as it was."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), eval_mode(model), torch.no_grad():
        outs = [model(x).detach().float() for _ in range(passes)]
    if outs[0].dim() != 2:
        return None
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    diff = max(float((o - normed[0]).abs().max()) for o in normed[1:]) if passes > 1 else 0.0
    changed = sum(int((o.argmax(1) != outs[0].argmax(1)).sum()) for o in outs[1:])
    if diff <= tol and changed == 0:
        return None
    return Flag(RANDOMIZED, "warning", run,
                f"{passes} forward passes in eval mode on the same {len(x)} inputs differ (normalized logits by up "
                f"to {diff:.3g}, {changed} prediction change(s)): a single-sample gradient is noise; use "
                "--attack ensemble --ensemble-version rand (APGD with expectation over transformation, EOT)",
                {"n": len(x), "passes": passes, "max_diff": diff, "prediction_changes": changed, "tol": tol})


def zero_gradients(model: nn.Module, x: Tensor, y: Tensor, *, run: str = "", min_share: float = ZERO_GRADIENT_SHARE,
                   norm: float = ZERO_GRADIENT_NORM) -> Flag | None:
    """Flag a model whose cross-entropy input gradient at ``x`` has l_1 norm ``<= norm`` on more than
    ``min_share`` of the inputs (EVAL-10 ``zero_gradient``; ``min_share=0`` flags any one, as EVAL-10 and
    AutoAttack's ``check_zero_gradients`` do). Typical causes: non-differentiable preprocessing (quantization,
    JPEG), or a saturated output."""
    with eval_mode(model), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        logits = model(x_in)
        if logits.dim() != 2 or not logits.requires_grad:
            grad = torch.zeros_like(x_in)  # no graph back to the input: every gradient is zero
        else:
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
            grad = torch.zeros_like(x_in) if grad is None else grad
    zero = grad.detach().flatten(1).abs().sum(dim=1) <= norm
    count = int(zero.sum())
    share = count / max(len(x), 1)
    if count == 0 or share <= min_share:
        return None
    return Flag(ZERO_GRADIENTS, "error", run,
                f"the input gradient of the loss is zero on {count} of {len(x)} inputs ({share:.0%}, flagged above "
                f"{min_share:.0%}): gradient attacks cannot move there; non-differentiable preprocessing or "
                "saturation: attack through BPDA (--bpda, or wrap the preprocessing with BPDA) or with a gradient-free "
                "attack (--attack square)",
                {"n": len(x), "zero": count, "share": share, "min_share": min_share, "norm": norm})


@contextmanager
def _autograd_spy(calls: list[str]) -> Iterator[None]:
    """Record every call of ``torch.autograd.grad`` and ``torch.autograd.backward`` (which ``Tensor.backward``
    calls) in the body, passing each on; the originals are put back afterwards."""
    grad, backward = torch.autograd.grad, torch.autograd.backward

    def spy_grad(*args: Any, **kwargs: Any) -> Any:
        calls.append("torch.autograd.grad")
        return grad(*args, **kwargs)

    def spy_backward(*args: Any, **kwargs: Any) -> Any:
        calls.append("backward")
        return backward(*args, **kwargs)

    torch.autograd.grad, torch.autograd.backward = spy_grad, spy_backward
    try:
        yield
    finally:
        torch.autograd.grad, torch.autograd.backward = grad, backward


def inner_optimization(model: nn.Module, x: Tensor, *, run: str = "") -> Flag | None:
    """Flag a forward pass that computes gradients: one forward in eval mode under ``torch.no_grad`` with
    ``torch.autograd.grad`` and ``backward`` spied on, and a pre-hook on every module noting whether grad mode was
    switched back on inside (EVAL-10 ``dynamic``). Such a defense optimizes at test time (a purification or
    projection loop), so attacking its outer gradient attacks the wrong function. Parameter gradients the
    forward accumulates are put back."""
    calls: list[str] = []
    grad_on: list[str] = []
    names = {m: name or type(model).__name__ for name, m in model.named_modules()}

    def pre_hook(module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            grad_on.append(names.get(module, type(module).__name__))

    saved = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    hooks = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), eval_mode(model), torch.no_grad(), _autograd_spy(calls):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for p, g in saved:
            p.grad = g
    if not calls and not grad_on:
        return None
    seen = sorted(set(calls)) + ([f"grad enabled in {sorted(set(grad_on))[0]}"] if grad_on else [])
    return Flag(INNER_OPTIMIZATION, "warning", run,
                f"the forward pass computes gradients ({'; '.join(seen)}): the defense runs an optimization at test "
                "time; attack the whole defense with BPDA/EOT or an adaptive attack (Athalye et al. 2018), not its "
                "outer gradient",
                {"autograd_calls": len(calls), "calls": sorted(set(calls)), "grad_enabled_in": sorted(set(grad_on))})


def few_classes_for_dlr(num_classes: int, losses: Sequence[str], *, run: str = "") -> Flag | None:
    """Flag a DLR loss among ``losses`` with fewer than the classes it needs: ``"dlr"`` divides by
    ``z_pi1 - z_pi3`` (K >= 3), the targeted ``"dlr-targeted"`` by ``z_pi1 - (z_pi3 + z_pi4) / 2`` (K >= 4)
    (Croce & Hein 2020, eqs. 5 and 7; EVAL-10 ``n_classes``)."""
    short = sorted({loss for loss in losses if num_classes < DLR_MIN_CLASSES.get(loss, 0)})
    if not short:
        return None
    need = max(DLR_MIN_CLASSES[loss] for loss in short)
    return Flag(FEW_CLASSES_FOR_DLR, "error", run,
                f"the loss {', '.join(short)} needs K >= {need} classes and the model has {num_classes}: use the "
                "cross-entropy loss (CE) instead",
                {"num_classes": num_classes, "losses": short, "min_classes": need})


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    records_by_attack: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    evaluations: Sequence[Any] | None = None,
    losses: Sequence[str] = (),
    run: str = "",
    min_share: float = ZERO_GRADIENT_SHARE,
    tolerance: int = 1,
    convergence_gap: float = 0.005,
) -> list[Flag]:
    """Every check of :data:`MODEL_CHECKS` on ``(x, y)`` (a cheap subset is enough), then the record checks on
    what is given.

    Args:
        model: the classifier as evaluated; not changed (modes, parameters, their gradients, the global RNG).
        x: inputs ``(N, *D)``, e.g. the first 100 attacked ones.
        y: labels ``(N,)``.
        threat: the evaluation's threat model (named in the evidence).
        records_by_attack: per-example records of evaluations at ``threat``, keyed by attack name or id, for
            :func:`blackbox_beats_whitebox`.
        evaluations: attack views (:class:`~trustlab.reports.runs.AttackView`) for :func:`not_converged`.
        losses: the attack losses the evaluation uses (for :func:`few_classes_for_dlr`).
        run: the run's name, written into each flag.
        min_share: see :func:`zero_gradients`.
        tolerance: examples of slack for :func:`blackbox_beats_whitebox`.
        convergence_gap: see :func:`not_converged`.

    Returns:
        The raised flags, in the order above.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``threat`` not an ``LpBall``.
        ValueError: ``x`` is empty or ``y`` does not match it.
    """
    check_model(model)
    check_threat(threat)
    if len(x) == 0 or y.shape != (len(x),):
        raise ValueError(f"x must be non-empty and y of shape ({len(x)},), got {tuple(y.shape)}")
    with eval_mode(model), torch.no_grad():
        logits = model(x)
    flags = [training_mode(model, run=run), probabilities(model, x, run=run), randomized(model, x, run=run),
             zero_gradients(model, x, y, run=run, min_share=min_share), inner_optimization(model, x, run=run)]
    if logits.dim() == 2:
        flags.append(few_classes_for_dlr(logits.shape[1], losses, run=run))
    if records_by_attack:
        flags.append(blackbox_beats_whitebox(records_by_attack, run=run, tolerance=tolerance,
                                             evidence=_where(threat)))
    if evaluations:
        flags += not_converged(evaluations, run=run, gap=convergence_gap)
    return [f for f in flags if f is not None]
