"""Auto-PGD (APGD): PGD with momentum and a step size that halves itself at checkpoints; APGD-T over top classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from trustlab.attacks.base import (
    check_attack_args,
    check_logits,
    check_model,
    check_restarts,
    check_steps,
    check_threat,
    eval_mode,
    first_forward,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.losses import TARGETED_LOSSES, get_loss, is_adversarial
from trustlab.attacks.pgd import DEFAULT_SEED, _Best, _evaluate, _keep_best, _projector
from trustlab.errors import NumericalError
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["apgd", "apgd_targeted", "APGD", "APGDT", "checkpoints", "MOMENTUM", "INITIAL_STEP_FACTOR"]

MOMENTUM = 0.75  # alpha of Algorithm 1: weight of the new gradient step against the previous update
INITIAL_STEP_FACTOR = 2.0  # eta^(0) = 2 * eps, for l_inf and l_2 alike
# the checkpoint schedule of Sec. 3.2: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
_P1, _DECAY, _MIN_GAP = Fraction(22, 100), Fraction(3, 100), Fraction(6, 100)


def checkpoints(steps: int) -> list[int]:
    """The checkpoints ``W = {w_j = ceil(p_j * N_iter) : p_j <= 1}`` of APGD, increasing and without repeats.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: the gaps shrink by 0.03 from
    0.22 down to 0.06. The ``p_j`` are exact fractions, so ``ceil`` never rounds ``0.22 * 100`` up to 23. For few
    steps several ``w_j`` coincide; as a set they count once.
    """
    steps = check_steps(steps)
    p = [Fraction(0), _P1]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - _DECAY, _MIN_GAP))
    return sorted({math.ceil(p_j * steps) for p_j in p if p_j <= 1})


def apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    steps: int = 100,
    restarts: int = 1,
    loss: str = "ce",
    rho: float = 0.75,
    y_target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD (Croce & Hein 2020, Algorithm 1): gradient ascent with momentum whose step size needs no tuning.

    One run from a random point ``x^(0)`` of the ball, with ``eta = 2 eps`` and ``alpha = 0.75``::

        x^(1)   = P(x^(0) + eta d(x^(0)))                                  d: sign(grad) or grad / ||grad||_2
        z^(k+1) = P(x^(k) + eta d(x^(k)))
        x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))     k = 1 .. N_iter - 1

    keeping ``x_max``, the iterate of highest loss ``f_max``. At each checkpoint ``w_j`` of :func:`checkpoints`
    an example halves its step and continues from ``x_max`` if (condition 1) the loss rose in fewer than
    ``rho * (w_j - w_{j-1})`` of the steps since ``w_{j-1}``, or (condition 2) its step was not halved at
    ``w_{j-1}`` and ``f_max`` has not grown since then. Step sizes are per example.

    The attack returns, per example, the best of all evaluated iterates ranked first by success (``argmax != y``,
    or ``== y_target``), then by the loss, as :func:`trustlab.attacks.pgd` does. Restart ``r + 1`` draws a new
    random start and re-attacks only the examples no earlier run broke. One run costs ``steps`` forward+backward
    passes and one forward.

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``; run in eval mode (warned if it is not), mode restored.
        x: clean inputs inside ``[threat.lower, threat.upper]``; not modified.
        y: true labels ``(N,)``.
        threat: the perturbation set (l_inf or l_2).
        steps: ``N_iter``, the gradient steps of one run (``>= 0``).
        restarts: number of runs (``>= 1``).
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR, needs ``K >= 3``), ``"margin"``, or ``"dlr-targeted"``
            (needs ``y_target`` and ``K >= 4``).
        rho: the threshold of condition 1, in ``(0, 1]``.
        y_target: if given, a targeted attack toward these classes (each must differ from ``y``).
        generator: the source of the random starts; ``None`` uses one seeded with ``DEFAULT_SEED`` (0).

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments (a DLR loss with too few classes is named with its ``K``).
        NumericalError: NaN or Inf in the logits or loss.

    Shapes:
        x (N, *D), y (N,), y_target (N,) or None -> x_adv (N, *D).

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
        attacks", ICML 2020, arXiv:2003.01690, Algorithm 1 and Sec. 3.2 (schedule), eq. 6 (DLR).
    """
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    steps, restarts, rho = check_steps(steps), check_restarts(restarts), _check_rho(rho)
    _check_loss(loss, targeted=y_target is not None)
    if threat.eps == 0:
        return x.clone()
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    run = dict(threat=threat, steps=steps, rho=rho, loss=loss, generator=generator)
    with eval_mode(model):
        best = _apgd_run(model, x, y, y_target, goal=y_target, check_first=True, **run)
        for _ in range(1, restarts):
            best = _rerun_robust(model, x, y, y_target, best, goal=y_target, **run)
    return best[0]


def apgd_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    loss: str = "dlr-targeted",
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-T: targeted APGD toward each of the ``n_target_classes`` highest-scoring other classes in turn.

    The targets are ranked by the clean logits (the true class left out). For the i-th target, APGD with the
    targeted loss (eq. 7 by default) runs ``restarts`` times on the examples no earlier run broke. Success is
    untargeted, ``argmax != y``: the target only steers the search. An example the model already misclassifies
    is returned as it is; for the others the result is the best iterate ranked by success, then by the objective
    of the run that found it. The targets cost one forward pass on ``x`` before the runs.

    Args:
        n_target_classes: how many targets (``1 <= n_target_classes <= K - 1``).
        loss: a loss with a target: ``"dlr-targeted"`` (eq. 7, needs ``K >= 4``), ``"ce"``, ``"dlr"`` or
            ``"margin"`` (their targeted forms, see :func:`trustlab.attacks.objective`).
        model, x, y, threat, steps, restarts, rho, generator: as for :func:`apgd`.

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments, or ``n_target_classes > K - 1`` (named with K).
        NumericalError: NaN or Inf in the logits or loss.

    Shapes:
        x (N, *D), y (N,) -> x_adv (N, *D).

    Reference:
        Croce & Hein 2020, arXiv:2003.01690, Sec. 4 (APGD-T, the targeted DLR loss of eq. 7).
    """
    check_model(model)
    check_attack_args(x, y, threat)
    steps, restarts, rho = check_steps(steps), check_restarts(restarts), _check_rho(rho)
    n_target_classes = check_positive_int(n_target_classes, "n_target_classes", minimum=1)
    _check_loss(loss, targeted=True)
    if threat.eps == 0:
        return x.clone()
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    run = dict(threat=threat, steps=steps, rho=rho, loss=loss, generator=generator)
    with eval_mode(model):
        with torch.no_grad():
            logits = first_forward(model, x)
        k = check_logits(logits, y)
        if n_target_classes > k - 1:
            raise ValueError(f"n_target_classes must be <= K - 1 = {k - 1} for K={k} classes, got {n_target_classes}")
        others = logits.scatter(1, y.unsqueeze(1), float("-inf"))  # leave the true class out of the ranking
        targets = others.topk(n_target_classes, dim=1).indices  # (N, K) -> (N, n_target_classes)
        best: _Best = (x.clone(), is_adversarial(logits, y), torch.full_like(y, -torch.inf, dtype=logits.dtype))
        for i in range(n_target_classes):
            for _ in range(restarts):
                best = _rerun_robust(model, x, y, targets[:, i], best, goal=None, **run)
    return best[0]


def _rerun_robust(
    model: nn.Module, x: Tensor, y: Tensor, y_target: Tensor | None, best: _Best, *, goal: Tensor | None, **run: Any
) -> _Best:
    """One more APGD run on the examples ``best`` has not broken, merged into ``best`` by (success, objective)."""
    idx = (~best[1]).nonzero().squeeze(1)
    if len(idx) == 0:
        return best
    y_t = None if y_target is None else y_target[idx]
    g_t = None if goal is None else goal[idx]
    new = _apgd_run(model, x[idx], y[idx], y_t, goal=g_t, check_first=False, **run)
    merged = _keep_best(tuple(t[idx] for t in best), *new)  # type: ignore[arg-type]
    return tuple(t.index_copy(0, idx, m) for t, m in zip(best, merged))  # type: ignore[return-value]


def _apgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_target: Tensor | None,
    *,
    goal: Tensor | None,
    threat: LpBall,
    steps: int,
    rho: float,
    loss: str,
    generator: torch.Generator,
    check_first: bool,
) -> _Best:
    """One run of Algorithm 1 from a random start; ``y_target`` steers the loss, ``goal`` defines success.

    Returns the best iterate per example by (success, loss) with its success and loss.
    """
    project = _projector(threat, x)
    shape = (-1, *([1] * (x.dim() - 1)))  # per-example scalars (N,) -> (N, 1, ..., 1)
    # checkpoints in the loop k = 1 .. N_iter - 1; one at k = N_iter - 1 could only replace x^(N_iter), which is
    # never stepped from and was already ranked, so it changes nothing and is left out
    W = [w for w in checkpoints(steps) if 0 < w < steps - 1]
    nonfinite: list[Tensor] = []
    best: _Best | None = None

    def f(x_k: Tensor, k: int) -> tuple[Tensor, Tensor | None]:
        """Loss at ``x^(k)`` and its gradient (none for the last iterate); ranks ``x^(k)`` as a candidate."""
        nonlocal best
        logits, obj, grad = _evaluate(model, x_k, y, y_target, loss=loss, need_grad=k < steps,
                                      first=check_first and k == 0)
        nonfinite.append(~torch.isfinite(logits.sum() + obj.sum()))
        success = is_adversarial(logits, y, y_target=goal)
        best = (x_k, success, obj) if best is None else _keep_best(best, x_k, success, obj)
        return obj, grad

    eta = torch.full((len(x),), INITIAL_STEP_FACTOR * threat.eps, dtype=x.dtype, device=x.device)
    x_prev = x_k = threat.random_init(x, generator=generator)  # x^(0); a new tensor, never aliasing x
    f_k, g_k = f(x_k, 0)
    f_hist = [f_k]  # f(x^(i)); an entry becomes f_max where its iterate was replaced by x_max
    x_max, f_max, g_max = x_k, f_k, g_k
    f_max_checked, halved = None, torch.zeros(len(x), dtype=torch.bool, device=x.device)
    w_prev = 0
    for k in range(steps):
        z = project(x_k + eta.view(shape) * threat.ascent_direction(g_k))  # z^(k+1)
        alpha = MOMENTUM if k > 0 else 1.0  # x^(1) = z^(1): no previous update yet
        x_prev, x_k = x_k, project(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_prev))  # x^(k+1)
        f_k, g_k = f(x_k, k + 1)
        f_hist.append(f_k)
        up = f_k > f_max
        x_max, f_max = torch.where(up.view(shape), x_k, x_max), torch.where(up, f_k, f_max)
        g_max = None if g_k is None else torch.where(up.view(shape), g_k, g_max)
        if k == 0:
            f_max_checked = f_max  # f_max^(w_0), after x^(1): the line before the loop of Algorithm 1
        if k not in W:
            continue
        halved = _halve_step(torch.stack(f_hist[w_prev : k + 1]), f_max_checked, f_max, halved, rho=rho)
        eta = torch.where(halved, eta / 2, eta)
        x_k, g_k = torch.where(halved.view(shape), x_max, x_k), torch.where(halved.view(shape), g_max, g_k)
        f_hist[-1] = torch.where(halved, f_max, f_k)
        f_max_checked, w_prev = f_max, k
    bad = torch.stack(nonfinite).nonzero()
    if len(bad):
        raise NumericalError(f"non-finite logits or loss at APGD iterate {int(bad[0, 0])} of {steps}")
    return cast(_Best, best)  # x^(0) was evaluated


def _halve_step(
    f_since: Tensor, f_max_then: Tensor, f_max_now: Tensor, halved_then: Tensor, *, rho: float
) -> Tensor:
    """Per example, whether to halve the step at checkpoint ``w_j`` (condition 1 or condition 2 of Sec. 3.2).

    Condition 1: ``sum_{i = w_{j-1}}^{w_j - 1} 1[f(x^(i+1)) > f(x^(i))] < rho * (w_j - w_{j-1})``, the loss rose
    in too few of the steps since the last checkpoint. Condition 2: the step was not halved at ``w_{j-1}`` and
    ``f_max`` is the same as there.

    Shapes:
        f_since (w_j - w_{j-1} + 1, N): ``f(x^(i))`` for ``i = w_{j-1} .. w_j``; the others (N,) -> (N,) bool.
    """
    rises = (f_since[1:] > f_since[:-1]).sum(dim=0)
    condition_1 = rises < rho * (len(f_since) - 1)
    condition_2 = ~halved_then & (f_max_then == f_max_now)
    return condition_1 | condition_2


def _check_rho(rho: object) -> float:
    """``rho`` must be a number in ``(0, 1]``."""
    value = check_nonneg_float(rho, "rho", positive=True)
    if value > 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return value


def _check_loss(loss: str, *, targeted: bool) -> None:
    """``loss`` must be a known loss; one of ``TARGETED_LOSSES`` needs a targeted attack."""
    get_loss(loss)
    if loss in TARGETED_LOSSES and not targeted:
        raise ValueError(f"loss {loss!r} needs y_target (a targeted attack); use apgd_targeted or another loss")


@dataclass(frozen=True)
class APGD:
    """Configuration of :func:`apgd` for the CLI and training loops (holds no model)."""

    threat: LpBall
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    rho: float = 0.75

    name: ClassVar[str] = "apgd"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        check_steps(self.steps)
        check_restarts(self.restarts)
        get_loss(self.loss)
        object.__setattr__(self, "rho", _check_rho(self.rho))

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`apgd` with this configuration."""
        return apgd(model, x, y, self.threat, steps=self.steps, restarts=self.restarts, loss=self.loss, rho=self.rho,
                    y_target=y_target, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the fixed ones of Algorithm 1, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "rho": self.rho,
            "momentum": MOMENTUM,
            "initial_step_size": INITIAL_STEP_FACTOR * self.threat.eps,
            "checkpoints": checkpoints(self.steps),
        }


@dataclass(frozen=True)
class APGDT:
    """Configuration of :func:`apgd_targeted` for the CLI and training loops (holds no model)."""

    threat: LpBall
    steps: int = 100
    n_target_classes: int = 9
    restarts: int = 1
    loss: str = "dlr-targeted"
    rho: float = 0.75

    name: ClassVar[str] = "apgd-t"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        check_steps(self.steps)
        check_positive_int(self.n_target_classes, "n_target_classes", minimum=1)
        check_restarts(self.restarts)
        get_loss(self.loss)
        object.__setattr__(self, "rho", _check_rho(self.rho))

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`apgd_targeted` with this configuration; it picks its own targets, so ``y_target`` must be
        ``None``."""
        if y_target is not None:
            raise ValueError("apgd-t picks its targets from the model's logits; y_target must be None")
        return apgd_targeted(model, x, y, self.threat, steps=self.steps, n_target_classes=self.n_target_classes,
                             restarts=self.restarts, loss=self.loss, rho=self.rho, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the fixed ones of Algorithm 1, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "steps": self.steps,
            "n_target_classes": self.n_target_classes,
            "restarts": self.restarts,
            "loss": self.loss,
            "rho": self.rho,
            "momentum": MOMENTUM,
            "initial_step_size": INITIAL_STEP_FACTOR * self.threat.eps,
            "checkpoints": checkpoints(self.steps),
        }
