"""FAB: the fast adaptive boundary attack (minimum norm), untargeted and FAB-T over the top other classes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

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
from trustlab.attacks.losses import is_adversarial
from trustlab.attacks.pgd import DEFAULT_SEED
from trustlab.errors import NumericalError
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["fab", "fab_targeted", "boundary_projection", "FAB", "FABT", "RESTART_RADIUS"]

RESTART_RADIUS = 0.5  # restarts after the first start on the sphere of radius eps / 2 around x (reference code)
_TINY = 1e-12  # keeps the distance ratios finite when a gradient or both projections vanish


def fab(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    steps: int = 100,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    y_target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FAB (Croce & Hein 2020, Algorithm 1): the smallest adversarial perturbation, found by projecting onto the
    linearized decision boundary, reported for the threat ``eps``.

    One run from ``x^(0)`` (``x`` itself for the first run, a random point at distance ``eps / 2`` after it):
    at ``x^(i)`` the boundary ``f_s = z_s - z_y = 0`` is linearized for the class ``s`` whose hyperplane
    ``pi_s`` is closest, ``s = argmin_{l != y} |f_l(x^(i))| / ||grad f_l(x^(i))||_q`` (q the dual of p), then::

        delta      = proj_p(x^(i), pi_s, C)      delta_orig = proj_p(x_orig, pi_s, C)       (Sec. 3.1)
        alpha      = min(||delta||_p / (||delta||_p + ||delta_orig||_p), alpha_max)
        x^(i+1)    = proj_C((1 - alpha)(x^(i) + eta delta) + alpha (x_orig + eta delta_orig))
        if x^(i+1) is misclassified: keep it if it is the closest so far, and
        x^(i+1)    = (1 - beta) x_orig + beta x^(i+1)                                      (backward step)

    with ``C`` the box and ``proj_p`` the minimal l_p step onto a hyperplane inside the box
    (:func:`boundary_projection`). With ``y_target`` success means ``argmax == y_target``, and the boundary is
    ``z_t - max_{j != t} z_j = 0``, of the class the target must overtake next. Restart ``r + 1`` runs only on
    the examples no earlier run broke within ``eps``.

    For the threat ``eps`` (as in AutoAttack), each example gets the closest adversarial point found if its norm
    is at most ``eps``, otherwise ``x`` itself; so ``x_adv`` always lies in the ball and the box. A step costs
    one forward pass with ``K`` gradients through it (one gradient with ``y_target``) and one more forward pass.

    Args:
        model: maps ``(N, *D)`` to logits ``(N, K)``; run in eval mode (warned if it is not), mode restored.
        x: clean inputs inside ``[threat.lower, threat.upper]``; not modified.
        y: true labels ``(N,)``.
        threat: the perturbation set (l_inf or l_2).
        steps: ``N_iter``, the steps of one run (``>= 0``).
        restarts: number of runs (``>= 1``); the first starts at ``x``.
        alpha_max: the largest weight of the step from ``x_orig``, in ``[0, 1]``.
        eta: the extrapolation factor of both projections, ``>= 1``.
        beta: the backward step toward ``x_orig`` after a success, in ``(0, 1]``.
        y_target: if given, a targeted attack toward these classes (each must differ from ``y``).
        generator: the source of the random starts; ``None`` uses one seeded with ``DEFAULT_SEED`` (0).

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments.
        NumericalError: NaN or Inf in the logits.

    Shapes:
        x (N, *D), y (N,), y_target (N,) or None -> x_adv (N, *D).

    Reference:
        Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack", ICML 2020,
        arXiv:1907.02044, Algorithm 1 and Sec. 3.1 (the projection); restarts and the ``eps`` report as in
        AutoAttack (Croce & Hein 2020, arXiv:2003.01690).
    """
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    steps, restarts = check_steps(steps), check_restarts(restarts)
    alpha_max, eta, beta = _check_step_params(alpha_max, eta, beta)
    if threat.eps == 0:
        return x.clone()
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    run = dict(threat=threat, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, generator=generator)
    with eval_mode(model):
        with torch.no_grad():
            logits = first_forward(model, x)
        check_logits(logits, y, y_target)
        best = _start(x, is_adversarial(logits, y, y_target=y_target))
        for r in range(restarts):
            best = _rerun_robust(model, x, y, y_target, best, goal=y_target, restart=r, **run)
    return _report(x, best, threat)


def fab_targeted(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FAB-T: FAB toward the boundary of each of the ``n_target_classes`` highest-scoring other classes in turn.

    The targets are ranked by the clean logits (the true class left out). For the i-th target, :func:`fab` with
    the boundary ``z_t - z_y = 0`` runs ``restarts`` times on the examples no earlier run broke within ``eps``.
    Success is untargeted, ``argmax != y``: the target only picks the hyperplane, as in AutoAttack's FAB-T. An
    example the model already misclassifies is returned as it is.

    Args:
        n_target_classes: how many targets (``1 <= n_target_classes <= K - 1``).
        model, x, y, threat, steps, restarts, alpha_max, eta, beta, generator: as for :func:`fab`.

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``; ``eps = 0`` returns a copy of ``x``.

    Raises:
        TypeError, ValueError: invalid arguments, or ``n_target_classes > K - 1`` (named with K).
        NumericalError: NaN or Inf in the logits.

    Shapes:
        x (N, *D), y (N,) -> x_adv (N, *D).

    Reference:
        Croce & Hein 2020, arXiv:1907.02044 (FAB, Algorithm 1); FAB-T as in the AutoAttack ensemble,
        arXiv:2003.01690, Sec. 4.
    """
    check_model(model)
    check_attack_args(x, y, threat)
    steps, restarts = check_steps(steps), check_restarts(restarts)
    n_target_classes = check_positive_int(n_target_classes, "n_target_classes", minimum=1)
    alpha_max, eta, beta = _check_step_params(alpha_max, eta, beta)
    if threat.eps == 0:
        return x.clone()
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=2)
    x = x.detach()
    run = dict(threat=threat, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, generator=generator)
    with eval_mode(model):
        with torch.no_grad():
            logits = first_forward(model, x)
        k = check_logits(logits, y)
        if n_target_classes > k - 1:
            raise ValueError(f"n_target_classes must be <= K - 1 = {k - 1} for K={k} classes, got {n_target_classes}")
        others = logits.scatter(1, y.unsqueeze(1), float("-inf"))  # leave the true class out of the ranking
        targets = others.topk(n_target_classes, dim=1).indices  # (N, K) -> (N, n_target_classes)
        best = _start(x, is_adversarial(logits, y))
        for i in range(n_target_classes):
            for r in range(restarts):
                best = _rerun_robust(model, x, y, targets[:, i], best, goal=None, restart=r, **run)
    return _report(x, best, threat)


def boundary_projection(t: Tensor, w: Tensor, b: Tensor, threat: LpBall) -> Tensor:
    """The minimal l_p step from ``t`` onto the hyperplane ``w·z = b`` inside the box (Croce & Hein 2020, Sec. 3.1).

    Solves ``min ||d||_p`` subject to ``w·(t + d) = b`` and ``lower <= t + d <= upper``, exactly, per row. Every
    coordinate moves in the direction ``v_i = sign(r) sign(w_i)`` that brings ``w·z`` toward ``b``
    (``r = b - w·t``), by at most its room to the box, ``room_i``. With a scalar ``lambda >= 0``:

    - p = inf: ``d_i = v_i min(lambda, room_i)``, and ``|w·d| = sum_i |w_i| min(lambda, room_i)``;
    - p = 2 (KKT: ``d`` is ``lambda' w`` clipped to the box): ``d_i = v_i |w_i| min(lambda, room_i / |w_i|)``,
      and ``|w·d| = sum_i w_i^2 min(lambda, room_i / |w_i|)``.

    Both are ``sum_i c_i min(lambda, q_i)``, concave and piecewise linear in ``lambda``; the smallest
    ``lambda`` where it reaches ``|r|`` is found in closed form between two sorted breakpoints ``q_i``. If even
    the box corner falls short (the hyperplane misses the box), every coordinate goes to the box: the point of
    the box closest to the hyperplane in ``w·z``.

    Args:
        t: points inside the box.
        w: hyperplane normals.
        b: offsets.
        threat: gives ``p`` and the box (``eps`` is not used: FAB's projection is unconstrained by the ball).

    Returns:
        ``d`` with the shape of ``t``.

    Shapes:
        t (N, D), w (N, D), b (N,) -> d (N, D).

    Reference:
        Croce & Hein 2020, arXiv:1907.02044, Sec. 3.1 (the projection on a hyperplane with box constraints).
    """
    r = b - (w * t).sum(1)  # (N,): the change of w·z needed
    v = torch.sign(r).unsqueeze(1) * torch.sign(w)  # (N, D): the direction of each coordinate
    lo = -math.inf if threat.lower is None else threat.lower
    hi = math.inf if threat.upper is None else threat.upper
    room = torch.where(v > 0, hi - t, t - lo).clamp_min(0)
    if threat.p == math.inf:
        c, q = w.abs(), room
    else:
        c, q = w * w, room / w.abs().clamp_min(_TINY)
    q = torch.where(c > 0, q, torch.zeros_like(q))  # coordinates with w_i = 0 never move
    q_sorted, order = q.sort(dim=1)
    c_sorted = c.gather(1, order)
    cq = c_sorted * q_sorted  # inf only where q is (no box), and then never read below
    head = torch.cat([cq.new_zeros(len(cq), 1), cq.cumsum(1)[:, :-1]], dim=1)  # sum_{i<k} c_i q_i
    tail = c_sorted.flip(1).cumsum(1).flip(1)  # sum_{i>=k} c_i
    reach = head + q_sorted * tail  # |w·d| at lambda = q_(k), nondecreasing in k
    k = (reach < r.abs().unsqueeze(1)).sum(1, keepdim=True)  # (N, 1): breakpoints that fall short
    feasible = k < q.shape[1]
    kk = k.clamp(max=q.shape[1] - 1)
    lam = (r.abs().unsqueeze(1) - head.gather(1, kk)) / tail.gather(1, kk).clamp_min(_TINY)
    lam = torch.where(feasible, lam.clamp_min(0), torch.full_like(lam, math.inf))
    step = torch.minimum(lam, q)  # 0 where w_i = 0, finite where the box is
    if threat.p == math.inf:
        return v * step
    return v * torch.minimum(w.abs() * step, room)  # room: |w_i| q_i must not leave the box by rounding


_Best = tuple[Tensor, Tensor]  # (x_out, u): the closest adversarial point found per example and its norm


def _start(x: Tensor, success: Tensor) -> _Best:
    """Before any run: ``x`` itself, at norm 0 where it already succeeds and at ``inf`` elsewhere."""
    return x.clone(), torch.where(success, 0.0, math.inf).to(x.dtype)


def _report(x: Tensor, best: _Best, threat: LpBall) -> Tensor:
    """The point found if it lies in the ball (``||x_out - x|| <= eps``), else ``x``: inside the ball and box."""
    x_out, u = best
    inside = (u <= threat.eps).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(inside, x_out, x)


def _rerun_robust(
    model: nn.Module, x: Tensor, y: Tensor, y_target: Tensor | None, best: _Best, *, goal: Tensor | None,
    restart: int, threat: LpBall, generator: torch.Generator, **run: Any
) -> _Best:
    """One more FAB run on the examples ``best`` has not broken within ``eps``, keeping the smaller norm."""
    idx = (best[1] > threat.eps).nonzero().squeeze(1)
    if len(idx) == 0:
        return best
    x_i = x[idx]
    x_0 = x_i.clone() if restart == 0 else _random_start(x_i, threat, generator)
    y_t = None if y_target is None else y_target[idx]
    g_t = None if goal is None else goal[idx]
    x_new, u_new = _fab_run(model, x_i, y[idx], y_t, goal=g_t, x_start=x_0, threat=threat, **run)
    closer = u_new < best[1][idx]
    x_out = torch.where(closer.view(-1, *([1] * (x.dim() - 1))), x_new, best[0][idx])
    u = torch.where(closer, u_new, best[1][idx])
    return best[0].index_copy(0, idx, x_out), best[1].index_copy(0, idx, u)


def _fab_run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_target: Tensor | None,
    *,
    goal: Tensor | None,
    x_start: Tensor,
    threat: LpBall,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
) -> _Best:
    """One run of Algorithm 1 from ``x_start``: the closest successful iterate (by ``goal``) and its norm."""
    shape = (-1, *([1] * (x.dim() - 1)))  # per-example scalars (N,) -> (N, 1, ..., 1)
    x_orig = x.flatten(1)  # (N, *D) -> (N, D)
    x_out, u = x.clone(), torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    x_i = x_start.flatten(1)
    nonfinite: list[Tensor] = []
    for _ in range(steps):
        logits, f, g = _linearized_boundary(model, x_i.reshape(x.shape), y, y_target, threat.p, goal=goal)
        nonfinite.append(~torch.isfinite(logits.sum()))
        g = g.flatten(1)
        b = (g * x_i).sum(1) - f  # pi_s: f(x^(i)) + g·(z - x^(i)) = 0, i.e. g·z = b
        delta = boundary_projection(x_i, g, b, threat)
        delta_orig = boundary_projection(x_orig, g, b, threat)
        a_i, a_orig = threat.norm(delta), threat.norm(delta_orig)
        alpha = (a_i / (a_i + a_orig).clamp_min(_TINY)).clamp(max=alpha_max).unsqueeze(1)
        x_i = threat.clip_to_box((1 - alpha) * (x_i + eta * delta) + alpha * (x_orig + eta * delta_orig))
        with torch.no_grad():
            logits = model(x_i.reshape(x.shape))
        nonfinite.append(~torch.isfinite(logits.sum()))
        success = is_adversarial(logits, y, y_target=goal)
        dist = threat.norm(x_i - x_orig)
        closer = success & (dist < u)
        x_out = torch.where(closer.view(shape), x_i.reshape(x.shape), x_out)
        u = torch.where(closer, dist, u)
        x_i = torch.where(success.unsqueeze(1), (1 - beta) * x_orig + beta * x_i, x_i)  # the backward step
    bad = torch.stack(nonfinite).nonzero() if nonfinite else None  # two flags per step, checked once at the end
    if bad is not None and len(bad):
        raise NumericalError(f"non-finite logits at FAB step {int(bad[0, 0]) // 2} of {steps}")
    return x_out, u


def _linearized_boundary(
    model: nn.Module, x_i: Tensor, y: Tensor, y_target: Tensor | None, p: float, *, goal: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, and the logit difference ``f`` whose zero set is the boundary FAB steps to, with its input gradient.

    Untargeted: ``f = z_s - z_y`` for the class of the closest linearized boundary,
    ``s = argmin_{l != y} |f_l| / ||grad f_l||_q`` with q the dual exponent of p (1 for l_inf, 2 for l_2).
    FAB-T (a ``y_target`` that only steers): ``f = z_t - z_y``. Targeted (``goal`` is the target, success is
    ``argmax == t``): ``f = z_t - z_r`` with ``r = argmax_{j != t} z_j``, the class ``t`` must overtake next.

    Shapes:
        x_i (N, *D), y (N,) -> logits (N, K), f (N,), grad (N, *D).
    """
    with torch.enable_grad():  # callers may hold torch.no_grad()
        x_in = x_i.detach().requires_grad_(True)
        z = model(x_in)
        if goal is not None:  # the strongest class other than the target, not y
            y = z.detach().scatter(1, goal.unsqueeze(1), float("-inf")).argmax(dim=1)
        f_all = z - z.gather(1, y.unsqueeze(1))  # (N, K): f_l = z_l - z_y
        if y_target is not None:
            f = f_all.gather(1, y_target.unsqueeze(1)).squeeze(1)
            (g,) = torch.autograd.grad(f.sum(), x_in)
            return z.detach(), f.detach(), g
        k = z.shape[1]
        grads = [torch.autograd.grad(f_all[:, j].sum(), x_in, retain_graph=j < k - 1)[0] for j in range(k)]
    g_all = torch.stack(grads, dim=1)  # K x (N, *D) -> (N, K, *D)
    q = 1.0 if p == math.inf else 2.0
    dist = f_all.detach().abs() / (g_all.flatten(2).norm(p=q, dim=2) + _TINY)
    s = dist.scatter(1, y.unsqueeze(1), math.inf).argmin(dim=1)  # (N,): the closest boundary, l != y
    rows = torch.arange(len(y), device=y.device)
    return z.detach(), f_all.detach()[rows, s], g_all[rows, s]


def _random_start(x: Tensor, threat: LpBall, generator: torch.Generator) -> Tensor:
    """A random point at distance ``RESTART_RADIUS * eps`` from ``x`` in the threat norm, clipped to the box."""
    if threat.p == math.inf:
        t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    t = t / threat.norm(t).clamp_min(_TINY).view(-1, *([1] * (x.dim() - 1)))
    return threat.clip_to_box(x + RESTART_RADIUS * threat.eps * t)


def _check_step_params(alpha_max: object, eta: object, beta: object) -> tuple[float, float, float]:
    """``alpha_max`` in ``[0, 1]``, ``eta >= 1``, ``beta`` in ``(0, 1]``."""
    a = check_nonneg_float(alpha_max, "alpha_max")
    if a > 1:
        raise ValueError(f"alpha_max must be in [0, 1], got {alpha_max}")
    e = check_nonneg_float(eta, "eta", positive=True)
    if e < 1:
        raise ValueError(f"eta must be >= 1 (an extrapolation past the boundary), got {eta}")
    bt = check_nonneg_float(beta, "beta", positive=True)
    if bt > 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    return a, e, bt


@dataclass(frozen=True)
class FAB:
    """Configuration of :func:`fab` for the CLI and training loops (holds no model)."""

    threat: LpBall
    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    name: ClassVar[str] = "fab"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        check_steps(self.steps)
        check_restarts(self.restarts)
        a, e, b = _check_step_params(self.alpha_max, self.eta, self.beta)
        object.__setattr__(self, "alpha_max", a)
        object.__setattr__(self, "eta", e)
        object.__setattr__(self, "beta", b)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`fab` with this configuration."""
        return fab(model, x, y, self.threat, steps=self.steps, restarts=self.restarts, alpha_max=self.alpha_max,
                   eta=self.eta, beta=self.beta, y_target=y_target, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the restart radius, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "steps": self.steps,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
            "restart_radius": RESTART_RADIUS * self.threat.eps,
        }


@dataclass(frozen=True)
class FABT:
    """Configuration of :func:`fab_targeted` for the CLI and training loops (holds no model)."""

    threat: LpBall
    steps: int = 100
    n_target_classes: int = 9
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    name: ClassVar[str] = "fab-t"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        check_steps(self.steps)
        check_positive_int(self.n_target_classes, "n_target_classes", minimum=1)
        check_restarts(self.restarts)
        a, e, b = _check_step_params(self.alpha_max, self.eta, self.beta)
        object.__setattr__(self, "alpha_max", a)
        object.__setattr__(self, "eta", e)
        object.__setattr__(self, "beta", b)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`fab_targeted` with this configuration; it picks its own targets, so ``y_target`` must be
        ``None``."""
        if y_target is not None:
            raise ValueError("fab-t picks its targets from the model's logits; y_target must be None")
        return fab_targeted(model, x, y, self.threat, steps=self.steps, n_target_classes=self.n_target_classes,
                            restarts=self.restarts, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                            generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the restart radius, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "steps": self.steps,
            "n_target_classes": self.n_target_classes,
            "restarts": self.restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
            "restart_radius": RESTART_RADIUS * self.threat.eps,
        }
