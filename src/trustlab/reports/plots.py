"""Report figures, each drawn from a metric's output (so its table shows the same numbers), as PNG bytes.

matplotlib is imported lazily and used through ``matplotlib.figure.Figure`` (its own Agg canvas), never pyplot:
that works headless and leaves the caller's backend and pyplot state untouched. Text that comes from files
(run and class names) is sanitised and its ``$`` escaped, so it is never read as mathtext.

Every function returns the PNG bytes and, given ``path``, also writes them there atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.runs.atomic import atomic_write_bytes
from trustlab.errors import MissingDependencyError
from trustlab.reports.metrics import EpsCurve
from trustlab.reports.tables import sanitize_text

__all__ = [
    "plot_path_on_surface",
    "plot_curves",
    "plot_eps_curves",
    "plot_per_class",
    "plot_matrix",
    "plot_examples",
    "plot_training",
    "plot_score_histogram",
    "plot_rate_panels",
    "delta_scale",
    "HISTORY_SERIES",
]

PathLike = str | os.PathLike[str] | None
HISTORY_SERIES = {  # summary.json history key -> legend label
    "train_acc": "train (on the inputs trained on)",
    "train_clean_acc": "train (clean)",
    "val_acc": "validation",
    "test_acc": "test",
    "val_pgd_acc": "validation PGD-10 (at the epoch's eps)",
}


def _figure(figsize: tuple[float, float]) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is a core dependency, but a trimmed install may lack it
        raise MissingDependencyError("plotting needs matplotlib: pip install 'matplotlib>=3.7'") from exc
    return Figure(figsize=figsize)


def _text(value: Any, limit: int | None = None) -> str:
    """User text made safe for matplotlib (no control characters, ``$`` not starting mathtext), cut to ``limit``
    characters with an ellipsis (the tables beside the figures hold the full text)."""
    text = sanitize_text(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _finish(fig: Any, path: PathLike) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return data


def plot_eps_curves(
    curves: Mapping[str, EpsCurve], *, xlabel: str = "eps", title: str | None = None, path: PathLike = None
) -> bytes:
    """Robust accuracy against eps, one line per curve (carried, solid); the raw curve dashed where it differs.

    Args:
        curves: legend label -> :func:`~trustlab.reports.metrics.accuracy_vs_eps` result.
        xlabel: the x-axis label (name the norm).
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: ``curves`` is empty.
    """
    if not curves:
        raise ValueError("curves is empty; need at least one accuracy-vs-eps curve")
    fig = _figure((7.5, 4.5))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.68, bottom=0.13, top=0.9)
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(c.eps, 100 * c.acc, marker="o", color=color, label=f"{_text(label, 40)} (n={c.n})")
        if not np.allclose(c.acc, c.raw):
            ax.plot(c.eps, 100 * c.raw, linestyle="--", marker="x", color=color, alpha=0.6,
                    label=f"{_text(label, 40)}, raw (not carried)")
    ax.set_xlabel(_text(xlabel))
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    ax.set_title(_text(title or "robust accuracy vs eps", 80))
    return _finish(fig, path)


def plot_per_class(
    class_names: Sequence[str], series: Mapping[str, np.ndarray], *, title: str | None = None, path: PathLike = None
) -> bytes:
    """Grouped bars of per-class accuracy, one bar per series (e.g. clean and robust) in each class.

    Args:
        class_names: the x tick labels, one per class.
        series: legend label -> :func:`~trustlab.reports.metrics.per_class_accuracy` result (NaN: no bar).
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: no series, or a series whose length is not ``len(class_names)``.
    """
    if not series:
        raise ValueError("series is empty; need at least one per-class accuracy array")
    for label, acc in series.items():
        if len(acc) != len(class_names):
            raise ValueError(f"series {label!r} has {len(acc)} values for {len(class_names)} classes")
    k = len(class_names)
    fig = _figure((max(6.0, 0.6 * k + 2), 4.2))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.28, top=0.88)
    width = 0.8 / len(series)
    x = np.arange(k)
    for j, (label, acc) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, 100 * np.nan_to_num(np.asarray(acc, float)), width,
               label=_text(label, 50), color=f"C{j % 10}")
    ax.set_xticks(x, [_text(c, 20) for c in class_names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(_text(title or "per-class accuracy", 80))
    return _finish(fig, path)


def plot_matrix(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, row_key: str = "train",
    title: str | None = None, path: PathLike = None,
) -> bytes:
    """The robustness matrix as a heatmap: rows (training) by ``columns`` (evaluation), cells in percent.

    Args:
        rows: :func:`~trustlab.reports.metrics.robustness_matrix` rows.
        columns: the accuracy columns to show (e.g. ``clean, fgsm, pgd, worst``); a None cell is left grey.
        row_key: the row labels' key; the run name is appended.
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: no rows or no columns.
    """
    if not rows or not columns:
        raise ValueError(f"need rows and columns, got {len(rows)} rows and {len(columns)} columns")
    values = np.array([[np.nan if r.get(c) is None else 100 * float(r[c]) for c in columns] for r in rows])
    fig = _figure((1.3 * len(columns) + 4.0, 0.55 * len(rows) + 1.6))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.42, right=0.97, bottom=0.08, top=0.82)
    ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_facecolor("0.85")
    for i in range(len(rows)):
        for j in range(len(columns)):
            text = "—" if np.isnan(values[i, j]) else f"{values[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(columns)), [_text(c) for c in columns])
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [_text(f"{r.get(row_key)} [{r.get('run')}]", 45) for r in rows], fontsize=8)
    fig.suptitle(_text(title or "robust accuracy (%)", 80), fontsize=10)
    return _finish(fig, path)


def delta_scale(x: np.ndarray, x_adv: np.ndarray, *, lower: float = 0.0, upper: float = 1.0) -> float:
    """The factor the perturbation panels are multiplied by: the largest ``|x_adv - x|`` becomes half the range.

    Returns 1.0 when no pixel changed.
    """
    peak = float(np.max(np.abs(np.asarray(x_adv, float) - np.asarray(x, float)))) if np.size(x) else 0.0
    return 0.5 * (upper - lower) / peak if peak > 0 else 1.0


def _image(x: np.ndarray, lower: float, upper: float) -> tuple[np.ndarray, dict[str, Any]]:
    """(C, H, W) in [lower, upper] -> what imshow needs."""
    if x.shape[0] == 3:
        return np.clip((np.transpose(x, (1, 2, 0)) - lower) / (upper - lower), 0, 1), {}
    return x[0], {"cmap": "gray", "vmin": lower, "vmax": upper}


def plot_examples(
    x: np.ndarray,
    x_adv: np.ndarray,
    titles: Sequence[tuple[str, str]],
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    title: str | None = None,
    path: PathLike = None,
) -> bytes:
    """A grid of adversarial examples, one row each: clean image, perturbation, adversarial image.

    The perturbation ``x_adv - x`` is shown amplified by :func:`delta_scale` around mid-grey (the factor is
    printed above the column), as in Goodfellow et al.'s panda figure.

    Shapes:
        x, x_adv: (K, C, H, W) in ``[lower, upper]``; C is 1 (greyscale) or 3 (RGB).

    Args:
        x: clean images.
        x_adv: adversarial images.
        titles: per row, the clean and adversarial panel titles (e.g. ``"panda 57.7%"``).
        lower: the input domain's lower bound.
        upper: the input domain's upper bound.
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: shapes differ, no examples, ``titles`` of the wrong length, or ``upper <= lower``.

    Reference:
        Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples", arXiv:1412.6572, Fig. 1.
    """
    x, x_adv = np.asarray(x, dtype=float), np.asarray(x_adv, dtype=float)
    if x.shape != x_adv.shape or x.ndim != 4 or len(x) == 0:
        raise ValueError(f"x and x_adv must share a (K, C, H, W) shape with K >= 1, got {x.shape} and {x_adv.shape}")
    if len(titles) != len(x):
        raise ValueError(f"titles must have one pair per example ({len(x)}), got {len(titles)}")
    if not upper > lower:
        raise ValueError(f"upper must exceed lower, got lower={lower}, upper={upper}")
    scale = delta_scale(x, x_adv, lower=lower, upper=upper)
    k = len(x)
    height = 2.4 * k + 0.75
    fig = _figure((7.0, height))
    axes = np.asarray(fig.subplots(k, 3, squeeze=False))
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.75 / height, hspace=0.35, wspace=0.1)
    mid = (lower + upper) / 2
    for i in range(k):
        delta = mid + (x_adv[i] - x[i]) * scale
        panels = [(x[i], titles[i][0]), (np.clip(delta, lower, upper), f"perturbation ×{scale:.3g}"),
                  (x_adv[i], titles[i][1])]
        for ax, (img, label) in zip(axes[i], panels):
            arr, kw = _image(img, lower, upper)
            ax.imshow(arr, interpolation="nearest", **kw)
            ax.set_title(_text(label, 32), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(_text(title or "adversarial examples", 70), fontsize=10)
    return _finish(fig, path)


def plot_training(history: Sequence[Mapping[str, Any]], *, title: str | None = None, selected: int | None = None,
                  path: PathLike = None) -> bytes:
    """Training curves from ``summary.json``'s history: accuracies per epoch (left) and the training loss (right).
    ``selected``: the epoch whose weights the run kept (``keep_best``), marked with a dashed line.

    Raises:
        ValueError: ``history`` is empty.
    """
    if len(history) == 0:
        raise ValueError("history is empty; the run has no finished epoch")
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    fig = _figure((10.0, 3.8))
    ax_acc, ax_loss = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.25)
    extra = sorted({k for h in history for k in h if k.startswith("val_") and k.endswith("_acc")} - set(HISTORY_SERIES))
    for key, label in [*HISTORY_SERIES.items(), *((k, k) for k in extra)]:  # extra: a defense's own checks
        ys = [_number(h.get(key)) for h in history]
        if any(math.isfinite(v) for v in ys):
            ax_acc.plot(epochs, [100 * v for v in ys], marker="o", markersize=3, label=label)
    if selected is not None and selected != epochs[-1]:
        ax_acc.axvline(selected, color="0.4", linestyle="--", linewidth=1, label=f"kept epoch {selected}")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    ax_loss.plot(epochs, [_number(h.get("train_loss")) for h in history], marker="o", markersize=3, color="C3")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    fig.suptitle(_text(title or "training curves", 80), fontsize=10)
    return _finish(fig, path)


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):  # None, or "nan" written for a non-finite value
        return math.nan


def plot_score_histogram(scores: Mapping[str, Sequence[float]], *, xlabel: str = "score", title: str | None = None,
                         path: PathLike = None) -> bytes:
    """Overlaid histograms of scores per group (e.g. a defense's outlier scores of poisoned vs clean points).

    Args:
        scores: group name -> its scores (an empty group is left out).
        xlabel: the axis label.
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: every group is empty.
    """
    groups = {k: np.asarray(v, dtype=float) for k, v in scores.items() if len(v)}
    if not groups:
        raise ValueError("scores holds no values to plot")
    edges = np.histogram_bin_edges(np.concatenate(list(groups.values())), bins=40)
    fig = _figure((6.0, 3.6))
    ax = fig.subplots()
    for name, values in groups.items():
        ax.hist(values, bins=edges, alpha=0.55, density=True, label=f"{_text(name, 30)} (n={len(values)})")
    ax.set_xlabel(_text(xlabel, 60))
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(_text(title or "scores", 70), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str, ylabel: str,
                title: str | None = None, vlines: Sequence[float] = (), percent: bool = True,
                path: PathLike = None) -> bytes:
    """Named curves ``y(x)`` on one axes (e.g. validation and test error against attack iterations).

    Args:
        curves: name -> ``(xs, ys)``; an empty curve is left out.
        xlabel, ylabel: the axis labels.
        title: figure title.
        vlines: x positions of dotted vertical lines (e.g. where a new poison point starts).
        percent: show the y values (fractions) as percentages.
        path: optional PNG file to write.

    Raises:
        ValueError: every curve is empty, or a curve's xs and ys differ in length.
    """
    shown = {k: (np.asarray(x, dtype=float), np.asarray(y, dtype=float)) for k, (x, y) in curves.items() if len(x)}
    if not shown:
        raise ValueError("curves holds no points to plot")
    for name, (x, y) in shown.items():
        if x.shape != y.shape:
            raise ValueError(f"curve {name!r}: {len(x)} x values but {len(y)} y values")
    fig = _figure((6.0, 3.6))
    ax = fig.subplots()
    for v in vlines:
        ax.axvline(v, color="0.8", linestyle=":", linewidth=0.8)
    scale = 100.0 if percent else 1.0
    for name, (x, y) in shown.items():
        ax.plot(x, scale * y, marker="." if len(x) < 60 else None, label=_text(name, 40))
    ax.set_xlabel(_text(xlabel, 60))
    ax.set_ylabel(_text(ylabel + (" (%)" if percent else ""), 60))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_text(title or ylabel, 70), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def plot_rate_panels(panels: Mapping[str, Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]], *,
                     ylabels: Mapping[str, str] | None = None, baselines: Mapping[str, float] | None = None,
                     xlabel: str = "x", title: str | None = None, path: PathLike = None) -> bytes:
    """A grid of panels of rates (fractions, shown as %): one row per group, one column per panel name, named lines
    ``y(x)`` in each (e.g. SmoothLLM's jailbroken rate against q, a line per N, a panel per perturbation, a row per
    prompt kind).

    Args:
        panels: row -> column -> line name -> ``(xs, ys)``; columns are laid out in order of first appearance.
        ylabels: row -> its y-axis label (default the row name).
        baselines: row -> a rate drawn dashed across that row's panels (e.g. the undefended rate).
        xlabel: the x-axis label.
        title: figure title.
        path: optional PNG file to write.

    Raises:
        ValueError: no panel holds a point, or a line's xs and ys differ in length.
    """
    columns = list(dict.fromkeys(c for cols in panels.values() for c in cols))
    rows = [r for r in panels if any(len(xs) for lines in panels[r].values() for xs, _ in lines.values())]
    if not rows:
        raise ValueError("panels holds no points to plot")
    for r in rows:
        for c, lines in panels[r].items():
            for name, (xs, ys) in lines.items():
                if len(xs) != len(ys):
                    raise ValueError(f"panel ({r!r}, {c!r}), line {name!r}: {len(xs)} x values but {len(ys)} y values")
    ylabels, baselines = dict(ylabels or {}), dict(baselines or {})
    fig = _figure((0.4 + 3.2 * len(columns), 0.6 + 2.6 * len(rows)))
    axes = np.atleast_2d(fig.subplots(len(rows), len(columns), squeeze=False, sharex=True, sharey=True))
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            ax = axes[i, j]
            for name, (xs, ys) in panels[r].get(c, {}).items():
                ax.plot(np.asarray(xs, dtype=float), 100.0 * np.asarray(ys, dtype=float), marker="o", markersize=3,
                        label=_text(name, 20))
            if baselines.get(r) is not None:
                ax.axhline(100.0 * float(baselines[r]), color="0.4", linestyle="--", linewidth=0.9, label="undefended")
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(_text(c, 30), fontsize=9)
            if j == 0:
                ax.set_ylabel(_text(ylabels.get(r, r), 30) + " (%)", fontsize=8)
            if i == len(rows) - 1:
                ax.set_xlabel(_text(xlabel, 40), fontsize=8)
        axes[i, -1].legend(fontsize=7)
    fig.suptitle(_text(title or "rates", 90), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path)


def plot_path_on_surface(grid: Sequence[float], surface: np.ndarray, path: np.ndarray, *, x: np.ndarray,
                         y: np.ndarray, label: str = "validation error", title: str | None = None,
                         path_file: PathLike = None) -> bytes:
    """A 2-D point's path drawn over the contour of a surface (e.g. the poison point over the validation error).

    Args:
        grid: the nodes of both axes (R,).
        surface: values at ``(grid[j], grid[i])`` as ``surface[i, j]`` (R, R).
        path: the point after each step, the start first (T, 2).
        x, y: points drawn by label (+1 / -1), e.g. the clean training set (N, 2), (N,).
        label: the colour bar's label.
        title: figure title.
        path_file: optional PNG file to write.

    Raises:
        ValueError: shapes that do not fit.
    """
    surface, path = np.asarray(surface, dtype=float), np.asarray(path, dtype=float)
    if surface.shape != (len(grid), len(grid)) or path.ndim != 2 or path.shape[1] != 2:
        raise ValueError(f"need surface (R, R) with R={len(grid)} and path (T, 2), got {surface.shape}, {path.shape}")
    fig = _figure((5.2, 4.4))
    ax = fig.subplots()
    cs = ax.contourf(grid, grid, surface, levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=_text(label, 40))
    for value, marker in ((1, "o"), (-1, "s")):
        pts = np.asarray(x)[np.asarray(y) == value]
        ax.scatter(pts[:, 0], pts[:, 1], marker=marker, c="w", edgecolors="k", s=20, label=f"class {value:+d}")
    ax.plot(path[:, 0], path[:, 1], "r.-", label="poison path")
    ax.plot(path[-1, 0], path[-1, 1], "r*", markersize=14)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(_text(title or "poison path", 70), fontsize=10)
    fig.tight_layout()
    return _finish(fig, path_file)
