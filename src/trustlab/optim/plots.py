"""Pictures and tables of optimizer trajectories, both built from the same :class:`Trajectory` values.

:func:`plot_trajectories` draws the path of each run (arrows from ``w_t`` to ``w_{t+1}``) over the objective —
contours for 2-D, the curve ``f(w)`` for 1-D — next to the loss per step; :func:`trajectory_table` gives one
row per run from the same data, so every plot has its table.

matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` (its own Agg canvas), never
pyplot: that works headless and leaves the caller's backend and pyplot state untouched.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustlab.runs.atomic import atomic_write_bytes
from trustlab.errors import MissingDependencyError
from trustlab.optim.objectives import Objective, get_objective
from trustlab.optim.trajectories import Trajectory

__all__ = ["plot_trajectories", "trajectory_table"]

MAX_ARROWS = 60  # longer runs are drawn with arrows between geometrically spaced iterates (dense early on)
_GRID = 201
_WINDOW_CAP = 3.0  # the view may grow to include iterates, up to this many window widths
_MARKERS = {"min": ("*", "black"), "saddle": ("P", "darkorange"), "max": ("^", "crimson")}


def plot_trajectories(
    objective: Objective | str,
    trajectories: Sequence[Trajectory],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw ``trajectories`` over ``objective`` and their losses per step; write a PNG to ``path``.

    Left: for 2-D objectives the contours of ``f`` (log-spaced levels when a tenth of the window lies in the
    lowest 1% of its range, as in Rosenbrock's valley); for 1-D objectives the curve ``f(w)``. Each run is drawn as
    arrows between successive iterates (``quiver`` in data units; runs longer than ``MAX_ARROWS`` steps use
    geometrically spaced iterates, with a thin line through all of them), its start as a circle and its end
    as a square; the known stationary points are marked and labelled. Right: ``f(w_t)`` against ``t``
    (log, or symlog when losses turn negative or huge).

    Args:
        objective: the objective the trajectories ran on (or its registered name).
        trajectories: at least one run, each with points of the objective's dimension.
        path: the PNG file; missing parent folders are created. Written atomically.
        title: figure title; defaults to the objective's name and formula.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no trajectories, or one whose dimension is not the objective's.
        MissingDependencyError: if matplotlib is not installed.
    """
    obj = get_objective(objective)
    if len(trajectories) == 0:
        raise ValueError("trajectories must hold at least one Trajectory, got none")
    for t in trajectories:
        if t.points.shape[1] != obj.dim:
            raise ValueError(f"trajectory {t.label!r} has dimension {t.points.shape[1]}, objective {obj.dim}")
    figure_cls = _figure_class()
    fig = figure_cls(figsize=(12, 4.8))
    # fixed margins: constrained layout would draw the figure twice (half the time of a plot)
    ax_path, ax_loss = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.11, top=0.9, wspace=0.18)
    colors = [f"C{i % 10}" for i in range(len(trajectories))]
    if obj.dim == 2:
        _draw_contours(ax_path, obj, _window(obj, trajectories))
    else:
        _draw_curve(ax_path, obj, _window(obj, trajectories)[0])
    for t, color in zip(trajectories, colors):
        _draw_path(ax_path, obj, t, color)
    _draw_stationary(ax_path, obj)
    ax_path.legend(loc="best", fontsize=8)
    _draw_losses(ax_loss, trajectories, colors)
    fig.suptitle(title if title is not None else f"{obj.name}: f = {obj.formula}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue())


def trajectory_table(trajectories: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """One flat, JSON-ready row per trajectory: what the plot shows, as numbers.

    Non-finite values (a run that overflowed) become ``None`` so that rows stay valid JSON.

    Returns:
        Rows with keys ``label, objective, optimizer, lr`` (initial), ``schedule, steps`` (steps run),
        ``start, final_point, final_loss, final_grad_norm, diverged``.
    """
    return [
        {
            "label": t.label,
            "objective": t.objective,
            "optimizer": t.optimizer,
            "lr": _num(t.lrs[0]) if len(t.lrs) else None,
            "schedule": t.schedule,
            "steps": t.steps_run,
            "start": [_num(v) for v in t.points[0]],
            "final_point": [_num(v) for v in t.points[-1]],
            "final_loss": _num(t.losses[-1]),
            "final_grad_norm": _num(t.grad_norms[-1]),
            "diverged": bool(t.diverged),
        }
        for t in trajectories
    ]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is a core dependency, but a trimmed install may lack it
        raise MissingDependencyError("plotting needs matplotlib: pip install 'matplotlib>=3.7'") from exc
    return Figure


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _window(obj: Objective, trajectories: Sequence[Trajectory]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The objective's window, grown to include the iterates but at most ``_WINDOW_CAP`` times as wide."""
    lims = [obj.xlim, obj.ylim] if obj.dim == 2 else [obj.xlim]
    pts = np.concatenate([t.points for t in trajectories])
    out = []
    for k, (lo, hi) in enumerate(lims):
        pad = (_WINDOW_CAP - 1) / 2 * (hi - lo)
        coords = pts[:, k][np.isfinite(pts[:, k])]
        coords = coords[(coords >= lo - pad) & (coords <= hi + pad)]
        span = (min(lo, coords.min(initial=lo)), max(hi, coords.max(initial=hi)))
        out.append(span)
    return (out[0], out[1] if obj.dim == 2 else obj.ylim)


def _evaluate(obj: Objective, w: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return obj.f(torch.as_tensor(w, dtype=torch.float64)).numpy()


def _draw_contours(ax: Any, obj: Objective, window: tuple[tuple[float, float], tuple[float, float]]) -> None:
    from matplotlib.colors import BoundaryNorm

    (x0, x1), (y0, y1) = window
    xs, ys = np.linspace(x0, x1, _GRID), np.linspace(y0, y1, _GRID)
    gx, gy = np.meshgrid(xs, ys)
    z = _evaluate(obj, np.stack([gx, gy], axis=-1))  # (G, G, 2) -> (G, G)
    zmin, span = float(z.min()), float(z.max() - z.min())
    if span <= 0:
        levels = 10
    elif np.quantile(z - zmin, 0.1) < 0.01 * span:  # a tenth of the window in the lowest 1% (a valley): log
        levels = zmin + np.concatenate([[0.0], np.geomspace(span * 1e-4, span, 24)])
    else:
        levels = np.linspace(zmin, zmin + span, 25)
    # colours by level index, so log-spaced levels use the whole colormap
    norm = BoundaryNorm(levels, ncolors=256, extend="both") if not isinstance(levels, int) else None
    ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=norm, alpha=0.35)
    ax.contour(gx, gy, z, levels=levels, cmap="viridis", norm=norm, linewidths=0.6)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("w1")
    ax.set_ylabel("w2")


def _draw_curve(ax: Any, obj: Objective, xlim: tuple[float, float]) -> None:
    ws = np.linspace(xlim[0], xlim[1], 400)
    ax.plot(ws, _evaluate(obj, ws[:, None]), color="0.3", linewidth=1.2)
    ax.set_xlim(*xlim)
    ax.set_ylim(*obj.ylim)
    ax.set_xlabel("w")
    ax.set_ylabel("f(w)")
    ax.axhline(0.0, color="0.8", linewidth=0.6)


def _draw_path(ax: Any, obj: Objective, t: Trajectory, color: str) -> None:
    pts = t.points if obj.dim == 2 else np.column_stack([t.points[:, 0], t.losses])  # 1-D: (w_t, f(w_t))
    pts = pts[np.isfinite(pts).all(axis=1)]
    idx = np.unique(np.round(np.geomspace(1, len(pts), min(len(pts), MAX_ARROWS + 1))).astype(int) - 1)
    sub = pts[idx]
    label = t.label + (f" (diverged at step {t.steps_run})" if t.diverged else "")
    ax.plot(pts[:, 0], pts[:, 1], color=color, linewidth=1.0, alpha=0.7, label=label)
    d = np.diff(sub, axis=0)
    ax.quiver(sub[:-1, 0], sub[:-1, 1], d[:, 0], d[:, 1], color=color, angles="xy", scale_units="xy", scale=1,
              width=0.004, headwidth=4, headlength=5, zorder=3)
    ax.plot(*pts[0], "o", color=color, markeredgecolor="black", markersize=7, zorder=4)
    ax.plot(*pts[-1], "s", color=color, markeredgecolor="black", markersize=6, zorder=4)


def _draw_stationary(ax: Any, obj: Objective) -> None:
    for s in obj.stationary:
        marker, color = _MARKERS[s.kind]
        xy = (s.point[0], s.point[1]) if obj.dim == 2 else (s.point[0], float(_evaluate(obj, np.array(s.point))))
        ax.plot(*xy, marker, color=color, markersize=12, markeredgecolor="white", zorder=5)
        text = f"{s.kind}{' (' + s.note + ')' if s.note else ''} {tuple(round(c, 3) for c in s.point)}"
        ax.annotate(text, xy, xytext=(6, 6), textcoords="offset points", fontsize=8, color=color, zorder=5)


def _draw_losses(ax: Any, trajectories: Sequence[Trajectory], colors: Sequence[str]) -> None:
    for t, color in zip(trajectories, colors):
        ok = np.isfinite(t.losses)
        ax.plot(np.arange(len(t.losses))[ok], t.losses[ok], color=color, label=t.label)
    finite = np.concatenate([t.losses[np.isfinite(t.losses)] for t in trajectories])
    lo, hi = float(finite.min()), float(finite.max())
    biggest = float(np.abs(finite).max())
    if lo > 0 and hi / lo > 100:
        ax.set_yscale("log")
    elif lo <= 0 and biggest > 100:
        nonzero = np.abs(finite[finite != 0])
        ax.set_yscale("symlog", linthresh=max(float(nonzero.min()), 1e-6 * biggest))
    ax.set_xlabel("step t")
    ax.set_ylabel("f(w_t)")
    ax.grid(True, alpha=0.3)
