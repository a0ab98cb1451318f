"""Optimizer trajectories on a small objective: where GD, noisy GD, momentum and Adam go, step by step.

:func:`run_trajectory` runs one ``torch.optim`` optimizer on a single parameter tensor (float64) and records
every iterate, loss, gradient norm and learning rate in a frozen :class:`Trajectory`. Divergence is a lesson,
not an error: a run stops early and is marked ``diverged`` when ``|w|`` or ``|f(w)|`` exceeds
``DIVERGENCE_THRESHOLD`` or becomes non-finite. :func:`compare` runs several optimizers from one start.

Gradients come from ``torch.autograd.grad`` and are handed to the optimizer through ``.grad`` of the private
parameter; nothing the caller passes is mutated and the global RNG is never used (gradient noise is drawn from the
caller's ``generator``).

Names: ``gd`` is ``torch.optim.SGD`` on the exact gradient, ``noisy-gd`` adds sampled Gaussian gradient noise (a
model of SGD's minibatch noise) and the ``halving`` schedule halves the learning rate every quarter of the run.
``sgd`` and ``step`` keep the one meaning they have in :mod:`trustlab.training.optimizers` (``torch.optim.SGD`` on
minibatches, and the x0.1 step-decay schedule) and are not used here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from trustlab.optim.objectives import Objective, get_objective
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["DIVERGENCE_THRESHOLD", "OPTIMIZERS", "SCHEDULES", "Trajectory", "compare", "run_trajectory"]

DIVERGENCE_THRESHOLD = 1e6  # |w| or |f(w)| beyond this (or non-finite) ends a run as diverged
OPTIMIZERS = ("gd", "noisy-gd", "momentum", "adam")
SCHEDULES = ("constant", "halving", "cosine", "exponential")
HALVING_FACTOR = 0.5  # "halving": lr *= 0.5 every steps // 4 steps
EXPONENTIAL_FINAL_FACTOR = 0.01  # "exponential": lr decays geometrically to 1% of its start over `steps`
_SPEC_KEYS = ("optimizer", "lr", "steps", "momentum", "schedule", "noise", "generator", "label")


@dataclass(frozen=True, eq=False)
class Trajectory:
    """One optimizer run, iterate by iterate (arrays are read-only).

    Args:
        points: the iterates ``w_0 .. w_T``; ``w_0`` is the start.
        losses: ``f(w_t)``.
        lrs: the learning rate used for step ``t`` (``w_t -> w_{t+1}``).
        optimizer: ``"gd"``, ``"noisy-gd"``, ``"momentum"`` or ``"adam"``.
        diverged: whether the run stopped early because ``|w|`` or ``|f|`` left ``DIVERGENCE_THRESHOLD``.
        label: legend text.
        grad_norms: ``||∇f(w_t)||`` (the exact gradient, without the sampled noise).
        objective: the objective's name.
        schedule: the learning-rate schedule's name.

    Shapes:
        points ``(T+1, d)``, losses ``(T+1,)``, grad_norms ``(T+1,)``, lrs ``(T,)``; ``T <= steps``.
    """

    points: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray
    optimizer: str
    diverged: bool
    label: str
    grad_norms: np.ndarray
    objective: str
    schedule: str = "constant"

    @property
    def steps_run(self) -> int:
        """``T``, the number of optimizer steps taken (fewer than asked when the run diverged)."""
        return len(self.lrs)


def run_trajectory(
    objective: Objective | str,
    start: Sequence[float] | float | Tensor | np.ndarray,
    *,
    optimizer: str = "gd",
    lr: float = 0.1,
    steps: int = 100,
    momentum: float = 0.9,
    schedule: str = "constant",
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    label: str | None = None,
) -> Trajectory:
    """Run ``optimizer`` on ``objective`` from ``start`` for up to ``steps`` steps.

    ``gd`` and ``noisy-gd`` are ``torch.optim.SGD``, ``momentum`` is ``SGD(momentum=momentum)`` (heavy ball,
    ``v <- momentum v + g; w <- w - lr v``) and ``adam`` is ``torch.optim.Adam`` with its default betas.
    ``noise > 0`` adds ``N(0, noise^2 I)`` to every gradient, drawn from ``generator``: that is what ``noisy-gd``
    means, so ``noisy-gd`` requires ``noise > 0`` and any noisy run requires an explicit ``generator`` (no
    hidden seed). The other optimizers accept noise too (noisy momentum, noisy Adam).

    Args:
        objective: an :class:`Objective` or a registered name.
        start: the start point, ``dim`` numbers (a bare number for 1-D); never mutated.
        optimizer: one of ``OPTIMIZERS``.
        lr: initial learning rate, ``> 0``.
        steps: maximal number of steps, ``>= 1``.
        momentum: the heavy-ball coefficient in ``[0, 1)``; used by ``"momentum"`` only.
        schedule: one of ``SCHEDULES``: ``"constant"``; ``"halving"`` (x0.5 every ``steps // 4``); ``"cosine"``
            (to 0 at ``steps``); ``"exponential"`` (geometric, to 1% of ``lr`` at ``steps``).
        noise: standard deviation of the Gaussian gradient noise, ``>= 0``.
        generator: the source of the noise; required when ``noise > 0``.
        label: legend text; by default built from the settings.

    Returns:
        The :class:`Trajectory`. Divergence ends the run early with ``diverged=True``; it never raises.

    Raises:
        ValueError: an unknown optimizer, schedule or objective; ``lr <= 0``; ``steps < 1``; ``noise < 0``;
            momentum outside ``[0, 1)``; a start of the wrong shape, non-finite or beyond the divergence
            threshold; ``noisy-gd`` without noise; noise without a generator.
        TypeError: a value of the wrong type.
    """
    obj = get_objective(objective)
    w0 = _as_start(obj, start)
    lr = check_nonneg_float(lr, "lr", positive=True)
    steps = check_positive_int(steps, "steps")
    noise = check_nonneg_float(noise, "noise")
    _check_choices(optimizer, schedule, noise, generator)
    momentum = check_nonneg_float(momentum, "momentum")
    if momentum >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")

    w = torch.nn.Parameter(w0.clone())
    opt = _build_optimizer(optimizer, w, lr, momentum)
    sched = _build_scheduler(schedule, opt, steps)
    loss, grad = obj.value_and_grad(w)
    points, losses, norms, lrs = [w0.numpy().copy()], [float(loss)], [float(grad.norm())], []
    diverged = False
    for _ in range(steps):
        if noise > 0:
            grad = grad + noise * torch.randn(grad.shape, generator=generator, dtype=grad.dtype)
        w.grad = grad
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        if sched is not None:
            sched.step()
        loss, grad = obj.value_and_grad(w)
        points.append(w.detach().numpy().copy())
        losses.append(float(loss))
        norms.append(float(grad.norm()))
        if _beyond(points[-1], losses[-1]):
            diverged = True
            break
    return Trajectory(
        points=_frozen(np.stack(points)),
        losses=_frozen(np.asarray(losses)),
        lrs=_frozen(np.asarray(lrs)),
        optimizer=optimizer,
        diverged=diverged,
        label=label if label is not None else _default_label(optimizer, lr, momentum, schedule, noise),
        grad_norms=_frozen(np.asarray(norms)),
        objective=obj.name,
        schedule=schedule,
    )


def compare(
    objective: Objective | str,
    start: Sequence[float] | float | Tensor | np.ndarray,
    specs: Sequence[Mapping[str, object]],
) -> list[Trajectory]:
    """Run several optimizers from the same ``start``: one :func:`run_trajectory` per spec.

    Args:
        objective: an :class:`Objective` or a registered name.
        start: the common start point.
        specs: mappings of :func:`run_trajectory`'s keyword arguments, e.g.
            ``[{"optimizer": "gd", "lr": 0.03}, {"optimizer": "momentum", "lr": 0.03}]``.

    Returns:
        The trajectories, in the order of ``specs``.

    Raises:
        ValueError: an empty ``specs``, a spec with an unknown key (the message lists the valid ones), or any
            error of :func:`run_trajectory`.
    """
    if len(specs) == 0:
        raise ValueError("specs must hold at least one optimizer spec, got none")
    for i, spec in enumerate(specs):
        unknown = sorted(set(spec) - set(_SPEC_KEYS))
        if unknown:
            raise ValueError(f"spec {i} has unknown key(s) {unknown}; valid: {list(_SPEC_KEYS)}")
    return [run_trajectory(objective, start, **dict(spec)) for spec in specs]  # type: ignore[arg-type]


def _as_start(obj: Objective, start: object) -> Tensor:
    """``start`` as a fresh float64 tensor of shape ``(dim,)``, validated."""
    if isinstance(start, Tensor):
        w0 = start.detach().to(device="cpu", dtype=torch.float64).clone()
    else:
        w0 = torch.as_tensor(np.array(start, dtype=np.float64))
    if w0.dim() == 0 and obj.dim == 1:
        w0 = w0.reshape(1)
    if w0.shape != (obj.dim,):
        raise ValueError(f"start must have shape ({obj.dim},) for objective {obj.name!r}, got {tuple(w0.shape)}")
    if not torch.isfinite(w0).all():
        raise ValueError(f"start must be finite, got {w0.tolist()}")
    if _beyond(w0.numpy(), float(obj.f(w0))):
        raise ValueError(f"start {w0.tolist()} is already beyond the divergence threshold {DIVERGENCE_THRESHOLD:g}")
    return w0


def _check_choices(optimizer: str, schedule: str, noise: float, generator: torch.Generator | None) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")
    if optimizer == "noisy-gd" and noise == 0:
        raise ValueError("optimizer 'noisy-gd' needs gradient noise > 0, got noise=0.0; use 'gd' for exact gradients")
    if noise > 0 and generator is None:
        raise ValueError(f"noise={noise} needs a torch.Generator for its draws, got generator=None")


def _build_optimizer(name: str, w: torch.nn.Parameter, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam([w], lr=lr)
    return torch.optim.SGD([w], lr=lr, momentum=momentum if name == "momentum" else 0.0)


def _build_scheduler(name: str, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    sched = torch.optim.lr_scheduler
    if name == "halving":
        return sched.StepLR(opt, step_size=max(1, steps // 4), gamma=HALVING_FACTOR)
    if name == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=steps)
    if name == "exponential":
        return sched.ExponentialLR(opt, gamma=EXPONENTIAL_FINAL_FACTOR ** (1.0 / steps))
    return None


def _beyond(w: np.ndarray, loss: float) -> bool:
    """Whether the run has diverged: a non-finite or huge iterate or loss."""
    if not (math.isfinite(loss) and np.isfinite(w).all()):
        return True
    return abs(loss) > DIVERGENCE_THRESHOLD or float(np.abs(w).max()) > DIVERGENCE_THRESHOLD


def _default_label(optimizer: str, lr: float, momentum: float, schedule: str, noise: float) -> str:
    parts = [optimizer, f"lr={lr:g}"]
    if optimizer == "momentum":
        parts.append(f"beta={momentum:g}")
    if schedule != "constant":
        parts.append(schedule)
    if noise > 0:
        parts.append(f"noise={noise:g}")
    return " ".join(parts)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a
