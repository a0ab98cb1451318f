"""The optimization lecture's demos: saddles, a cubic, and GD vs momentum vs Adam vs noisy GD, as PNGs and rows.

Every row's ``status`` and ``lesson`` are computed from its trajectory by :func:`describe` (gradient norm, the
nearest known stationary point, divergence, oscillation, GD's stability ratio ``lr * lambda_max`` at the
minimum), so the text stays true if a setting changes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustlab.optim.objectives import Objective, StationaryPoint, get_objective
from trustlab.optim.plots import plot_trajectories, trajectory_table
from trustlab.optim.trajectories import Trajectory, compare, run_trajectory
from trustlab.seeding import derive_generator

__all__ = ["GRAD_TOL", "STATUSES", "describe", "run_lecture_demos"]

GRAD_TOL = 1e-3  # |grad f| below this counts as "the gradient has vanished"
STATUSES = ("diverged", "converged to min", "converged to max", "stuck near saddle", "not converged")
_ESCAPE_FACTOR = 10.0  # "moved away from the saddle": distance to it grew at least this much


def run_lecture_demos(out_dir: str | Path, *, seed: int = 0) -> list[dict[str, Any]]:
    """Run the lecture's four demos, write one PNG per objective into ``out_dir``, return one row per run.

    (a) ``optim-cubic-saddle.png``: GD on ``w1^2 + w2^3`` from ``w2 = 0.5`` crawls into the degenerate saddle;
    from ``w2 = -0.5`` it diverges. (b) ``optim-saddle.png``: GD on ``w1^2 - w2^2`` from ``(1, 0)`` converges to
    the saddle; from a seeded random perturbation of it, it escapes. (c) ``optim-cubic.png``: GD on
    ``w^3 + w^2 - 5w`` with a good learning rate, from beyond the local maximum, and with learning rates past the
    stability limit ``2 / f''(1) = 0.25``. (d) ``optim-ill-conditioned.png`` and ``optim-rosenbrock.png``: GD,
    momentum, Adam and noisy GD (with a cosine or halving schedule) from the same start.

    Args:
        out_dir: folder for the PNGs (created if missing).
        seed: seeds the random start of (b) and noisy GD's gradient noise in (d).

    Returns:
        The :func:`~trustlab.optim.plots.trajectory_table` rows, each with ``demo``, ``figure`` (PNG file
        name), ``status`` (one of ``STATUSES``) and ``lesson``.
    """
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    for demo, objective, runs in _demos(seed):
        figure = f"optim-{objective.name}.png"
        title = f"({demo}) {objective.name}: f = {objective.formula}"
        plot_trajectories(objective, runs, out_dir / figure, title=title)
        for row, t in zip(trajectory_table(runs), runs):
            rows.append({**row, "demo": demo, "figure": figure, **describe(t, objective)})
    return rows


def describe(trajectory: Trajectory, objective: Objective | str, *, tol: float = GRAD_TOL) -> dict[str, str]:
    """Say where a run ended, from its numbers: ``{"status": ..., "lesson": ...}``.

    The status is ``"diverged"`` if the run was stopped for divergence; otherwise, if the final gradient norm
    is below ``tol``, ``"converged to min"``/``"converged to max"``/``"stuck near saddle"`` after the nearest
    known stationary point; otherwise ``"not converged"``. The lesson adds the numbers, whether the last steps
    oscillate, whether the run left a saddle it started near, and for constant-lr GD the stability ratio
    ``lr * lambda_max(Hessian)`` at the minimum (GD is locally stable there iff it is below 2).

    Raises:
        ValueError: if ``tol`` is not finite and ``> 0``.
    """
    if not (0 < tol < math.inf):
        raise ValueError(f"tol must be finite and > 0, got {tol}")
    obj = get_objective(objective)
    t, w, loss, g = trajectory.steps_run, trajectory.points[-1], trajectory.losses[-1], trajectory.grad_norms[-1]
    near = _nearest(obj, w)
    if trajectory.diverged:
        status = "diverged"
        text = f"diverged after {t} steps: |w| = {np.abs(w).max():.3g}, f = {loss:.3g}"
    elif g < tol and near is not None:
        status = "stuck near saddle" if near.kind == "saddle" else f"converged to {near.kind}"
        dist = float(np.linalg.norm(w - np.array(near.point)))
        text = (
            f"{status} {_fmt(near.point)}: |grad| = {g:.2g} < {tol:g} after {t} steps, "
            f"distance {dist:.2g}, f = {loss:.4g}"
        )
    else:
        status = "not converged"
        text = f"not converged after {t} steps: |grad| = {g:.3g}, f = {loss:.4g}, w = {_fmt(w)}"
        if _oscillates(trajectory.points):
            text += "; oscillating (successive steps point opposite ways)"
    text += _escape_clause(obj, trajectory) + _stability_clause(obj, trajectory)
    return {"status": status, "lesson": text}


def _demos(seed: int) -> list[tuple[str, Objective, list[Trajectory]]]:
    cubic_saddle, saddle, cubic = (get_objective(n) for n in ("cubic-saddle", "saddle", "cubic"))
    g_start, g_ill, g_rosen = (derive_generator(seed, k) for k in (1, 2, 3))
    # a small seeded perturbation of the start on the saddle's stable manifold
    nudge = 0.01 * torch.randn(2, generator=g_start, dtype=torch.float64)
    random_start = torch.tensor([1.0, 0.0], dtype=torch.float64) + nudge
    ill, rosen = get_objective("ill-conditioned"), get_objective("rosenbrock")
    return [
        ("a", cubic_saddle, [_gd_from(cubic_saddle, s, lr=0.1, steps=200) for s in ((1.0, 0.5), (1.0, -0.5))]),
        ("b", saddle, [_gd_from(saddle, s, lr=0.1, steps=100) for s in ((1.0, 0.0), random_start)]),
        ("c", cubic, [
            run_trajectory(cubic, 0.0, lr=0.05, steps=100, label="w0=0, lr=0.05"),
            run_trajectory(cubic, -2.0, lr=0.05, steps=100, label="w0=-2, lr=0.05"),
            run_trajectory(cubic, 0.0, lr=0.3, steps=100, label="w0=0, lr=0.3"),
            run_trajectory(cubic, 0.0, lr=0.4, steps=100, label="w0=0, lr=0.4"),
        ]),
        ("d", ill, compare(ill, ill.starts[0], [
            {"optimizer": "gd", "lr": 0.03, "steps": 100},
            {"optimizer": "momentum", "lr": 0.03, "steps": 100},
            {"optimizer": "adam", "lr": 0.1, "steps": 100},
            {"optimizer": "noisy-gd", "lr": 0.03, "steps": 100, "noise": 1.0, "schedule": "cosine", "generator": g_ill},
        ])),
        ("d", rosen, compare(rosen, rosen.starts[0], [
            {"optimizer": "gd", "lr": 1e-3, "steps": 500},
            {"optimizer": "momentum", "lr": 1e-3, "steps": 500},
            {"optimizer": "adam", "lr": 0.05, "steps": 500},
            {"optimizer": "noisy-gd", "lr": 1e-3, "steps": 500, "noise": 2.0, "schedule": "halving",
             "generator": g_rosen},
        ])),
    ]


def _gd_from(obj: Objective, start: Any, *, lr: float, steps: int) -> Trajectory:
    label = f"gd lr={lr:g} from {_fmt(np.asarray(start, dtype=float))}"
    return run_trajectory(obj, start, lr=lr, steps=steps, label=label)


def _nearest(obj: Objective, w: np.ndarray) -> StationaryPoint | None:
    if not obj.stationary or not np.isfinite(w).all():
        return None
    return min(obj.stationary, key=lambda s: float(np.linalg.norm(w - np.array(s.point))))


def _oscillates(points: np.ndarray, window: int = 10) -> bool:
    """Whether most of the last ``window`` pairs of successive steps point in opposite directions."""
    d = np.diff(points[-(window + 2):], axis=0)
    if len(d) < 2:
        return False
    dots = np.einsum("ij,ij->i", d[1:], d[:-1])
    return bool(np.mean(dots < 0) > 0.5)


def _escape_clause(obj: Objective, trajectory: Trajectory) -> str:
    start, end = trajectory.points[0], trajectory.points[-1]
    near = _nearest(obj, start)
    if near is None or near.kind != "saddle":
        return ""
    p = np.array(near.point)
    d0 = float(np.linalg.norm(start - p))
    d1 = float(np.linalg.norm(end - p)) if np.isfinite(end).all() else math.inf
    if d1 < _ESCAPE_FACTOR * d0:
        return ""
    return f"; moved away from the saddle at {_fmt(near.point)} (distance {d0:.2g} -> {d1:.3g})"


def _stability_clause(obj: Objective, trajectory: Trajectory) -> str:
    """For constant-lr GD: ``lr * lambda_max`` at the (first) minimum; locally stable iff < 2."""
    mins = [s for s in obj.stationary if s.kind == "min"]
    if trajectory.optimizer != "gd" or trajectory.schedule != "constant" or not mins:
        return ""
    hess = torch.autograd.functional.hessian(obj.f, torch.tensor(mins[0].point, dtype=torch.float64))
    lam = float(torch.linalg.eigvalsh(hess.reshape(obj.dim, obj.dim)).max())
    ratio = float(trajectory.lrs[0]) * lam
    verdict = "< 2: locally stable" if ratio < 2 else ">= 2: unstable"
    return f"; lr * lambda_max at the min {_fmt(mins[0].point)} = {ratio:.3g} ({verdict})"


def _fmt(point: Any) -> str:
    return "(" + ", ".join(f"{float(c):.3g}" for c in point) + ")"
