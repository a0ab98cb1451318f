"""Projected gradient descent (ascent on the loss) with per-example best-iterate tracking and restarts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from trustlab.attacks.base import (
    check_attack_args,
    check_bool,
    check_logits,
    check_model,
    check_restarts,
    check_step_size,
    check_steps,
    check_threat,
    eval_mode,
    first_forward,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.losses import get_loss, is_adversarial, objective
from trustlab.errors import NumericalError
from trustlab.threat import LpBall

__all__ = ["pgd", "PGD", "default_step_size", "STEP_SIZE_FACTOR", "DEFAULT_SEED"]

STEP_SIZE_FACTOR = 2.5  # Madry et al.: step_size = 2.5 * eps / steps lets one run cross the ball more than once
DEFAULT_SEED = 0  # seed of the private generator used when a random start is asked for without a generator

# (x_adv, success, objective) of the best iterate per example, ranked by (success, objective)
_Best = tuple[Tensor, Tensor, Tensor]


def default_step_size(eps: float, steps: int) -> float:
    """``2.5 * eps / steps`` (Madry et al. 2018), the step size used when none is given."""
    return STEP_SIZE_FACTOR * eps / max(steps, 1)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    y_target: Tensor | None = None,
    loss: str = "ce",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the loss inside the threat ball, keeping each example's best iterate.

    Algorithm (one run): ``x_0 = random_init(x)`` (or ``x``); for ``t < steps``:
    ``x_{t+1} = Proj_{B(x, eps) ∩ box}(x_t + step_size * d_t)``, with ``d_t`` the steepest-ascent direction of
    the loss at ``x_t`` (``sign(grad)`` for p = inf, ``grad / ||grad||_2`` for p = 2). Every iterate
    ``x_0..x_steps`` is a candidate, evaluated with the forward pass that also gives its gradient (plus one final
    forward for ``x_steps``: PGD-k costs k forward+backward passes and one forward). Per example the attack
    returns the best candidate, ranked first by success (``argmax != y``, or ``== y_target``), then by the loss:
    a successful iterate is never replaced by an unsuccessful one.

    Restart ``r + 1`` draws a new random start and re-attacks only the examples that no earlier run broke
    (as APGD does), so success is monotone in ``steps`` (same ``step_size``) and in ``restarts`` (same
    generator). Without a random start every run is the same, so ``restarts`` is ignored.

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``, ``K >= 2``. Run in eval mode (warned if it is not); its
            mode, parameters, buffers and ``.grad`` fields are left as they were.
        x: clean inputs inside ``[threat.lower, threat.upper]``; not modified.
        y: true labels ``(N,)``.
        threat: the perturbation set.
        steps: number of gradient steps k (``>= 0``). ``steps = 0`` returns the best start point.
        step_size: step length in the threat norm; ``None`` means ``2.5 * eps / steps``.
        random_start: start from ``threat.random_init(x)`` instead of ``x``.
        restarts: number of runs (``>= 1``).
        y_target: if given, a targeted attack toward these classes (each must differ from ``y``).
        loss: a key of :data:`trustlab.attacks.LOSSES` (``"ce"`` or ``"margin"``).
        generator: the source of all randomness. ``None`` uses a fresh generator on ``x.device`` seeded with
            ``DEFAULT_SEED`` (0), so calls are reproducible and the global RNG is never touched.

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments (INP-01..09).
        NumericalError: NaN or Inf in the logits or loss; the message names the step.

    Shapes:
        x (N, *D), y (N,), y_target (N,) or None -> x_adv (N, *D).

    Reference:
        Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial
        Attacks", ICLR 2018, arXiv:1706.06083 (eq. 2 and Sec. 5); restarts on the unbroken points and
        best-iterate tracking follow Croce & Hein 2020, arXiv:2003.01690 (APGD, Alg. 1).
    """
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    steps, restarts = check_steps(steps), check_restarts(restarts)
    step_size, random_start = check_step_size(step_size), check_bool(random_start, "random_start")
    get_loss(loss)
    if threat.eps == 0:
        return x.clone()
    if step_size is None:
        step_size = default_step_size(threat.eps, steps)
    if random_start and generator is None:
        generator = torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    run = dict(threat=threat, steps=steps, step_size=step_size, random_start=random_start, loss=loss)
    with eval_mode(model):
        x_adv, success, obj = _pgd_run(model, x, y, y_target, restart=0, generator=generator, **run)
        for r in range(1, restarts if random_start else 1):
            idx = (~success).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            y_t = None if y_target is None else y_target[idx]
            new = _pgd_run(model, x[idx], y[idx], y_t, restart=r, generator=generator, **run)
            merged = _keep_best((x_adv[idx], success[idx], obj[idx]), *new)
            x_adv, success, obj = (t.index_copy(0, idx, m) for t, m in zip((x_adv, success, obj), merged))
    return x_adv


def _pgd_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_target: Tensor | None,
    *,
    threat: LpBall,
    steps: int,
    step_size: float,
    random_start: bool,
    loss: str,
    generator: torch.Generator | None,
    restart: int,
) -> _Best:
    """One PGD run from one start; returns the best iterate per example with its success and objective."""
    project = _projector(threat, x)
    x_t = threat.random_init(x, generator=generator) if random_start else x.clone()  # never alias the input
    best: _Best | None = None
    nonfinite: list[Tensor] = []  # one 0-d flag per evaluated iterate; checked once at the end (no sync per step)
    for t in range(steps + 1):
        first = restart == 0 and t == 0
        logits, obj, grad = _evaluate(model, x_t, y, y_target, loss=loss, need_grad=t < steps, first=first)
        nonfinite.append(~torch.isfinite(logits.sum() + obj.sum()))  # NaN/Inf anywhere reaches the sum
        success = is_adversarial(logits, y, y_target=y_target)
        best = (x_t, success, obj) if best is None else _keep_best(best, x_t, success, obj)
        if grad is not None:
            x_t = project(torch.add(x_t, threat.ascent_direction(grad), alpha=step_size))
    bad = torch.stack(nonfinite).nonzero()
    if len(bad):
        t = int(bad[0, 0])
        where = f"PGD step {t} of {steps}" if t < steps else f"the final evaluation after PGD step {steps}"
        raise NumericalError(f"non-finite logits or loss at {where} (restart {restart})")
    return cast(_Best, best)  # steps + 1 >= 1 candidates were evaluated


def _evaluate(
    model: nn.Module, x_t: Tensor, y: Tensor, y_target: Tensor | None, *, loss: str, need_grad: bool, first: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Logits and objective at ``x_t`` (detached), and the objective's input gradient when ``need_grad``.

    The forward pass that gives the gradient of iterate t also evaluates it, so no iterate is run twice.
    """
    with torch.enable_grad() if need_grad else torch.no_grad():  # callers may hold torch.no_grad()
        x_in = x_t.detach().requires_grad_(need_grad)
        logits = first_forward(model, x_in) if first else model(x_in)
        if first:
            check_logits(logits, y, y_target)
        obj = objective(logits, y, y_target=y_target, loss=loss)
        grad = torch.autograd.grad(obj.sum(), x_in)[0] if need_grad else None
    return logits.detach(), obj.detach(), grad


def _projector(threat: LpBall, x: Tensor) -> Callable[[Tensor], Tensor]:
    """``z -> Proj_{B(x, eps) ∩ box}(z)``, hoisting what does not change between steps.

    For p = inf the ball and the box are both boxes, so the projection is one clamp to ``threat.box(x)``
    (computed once), the same map as ``threat.project(z, x)`` in one pass instead of four.
    """
    if threat.p == math.inf:
        lo, hi = threat.box(x)
        return lambda z: torch.clamp(z, lo, hi)
    return lambda z: threat.project(z, x)


def _keep_best(best: _Best, x_c: Tensor, s_c: Tensor, o_c: Tensor) -> _Best:
    """Per example, replace ``best`` by the candidate if it ranks higher by (success, objective)."""
    x_b, s_b, o_b = best
    better = (s_c & ~s_b) | ((s_c == s_b) & (o_c > o_b))
    mask = better.view(-1, *([1] * (x_c.dim() - 1)))  # (N,) -> (N, 1, ..., 1)
    return torch.where(mask, x_c, x_b), s_b | s_c, torch.where(better, o_c, o_b)


@dataclass(frozen=True)
class PGD:
    """Configuration of :func:`pgd` for the CLI and training loops (holds no model)."""

    threat: LpBall
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"

    name: ClassVar[str] = "pgd"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        check_steps(self.steps)
        check_restarts(self.restarts)
        object.__setattr__(self, "step_size", check_step_size(self.step_size))
        check_bool(self.random_start, "random_start")
        get_loss(self.loss)

    @property
    def resolved_step_size(self) -> float:
        """The step size the attack uses: ``step_size``, or ``2.5 * eps / steps`` when it is ``None``."""
        return default_step_size(self.threat.eps, self.steps) if self.step_size is None else self.step_size

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`pgd` with this configuration."""
        return pgd(
            model,
            x,
            y,
            self.threat,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            restarts=self.restarts,
            y_target=y_target,
            loss=self.loss,
            generator=generator,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the resolved step size, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "steps": self.steps,
            "step_size": self.resolved_step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "loss": self.loss,
        }
