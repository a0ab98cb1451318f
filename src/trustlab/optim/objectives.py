"""Small 1-D and 2-D objectives whose geometry a lecture can see: saddles, degenerate saddles, a cubic with a
local maximum, the Rosenbrock valley and an ill-conditioned quadratic.

Each objective is a frozen :class:`Objective` value holding a batched, differentiable torch function, a default
plotting window, default start points and its known stationary points (with their type) for annotation.
``OBJECTIVES`` holds one of each by name; :func:`get_objective` looks one up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "OBJECTIVES",
    "STATIONARY_KINDS",
    "Objective",
    "StationaryPoint",
    "get_objective",
    "ill_conditioned",
]

STATIONARY_KINDS = ("min", "saddle", "max")


@dataclass(frozen=True)
class StationaryPoint:
    """A point where the gradient vanishes.

    Args:
        point: its coordinates, one per dimension of the objective.
        kind: ``"min"``, ``"saddle"`` or ``"max"`` (local).
        note: a short qualifier for the plot label, e.g. ``"degenerate"``.
    """

    point: tuple[float, ...]
    kind: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in STATIONARY_KINDS:
            raise ValueError(f"kind must be one of {STATIONARY_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Objective:
    """A function ``f : R^d -> R`` (d = 1 or 2) to minimise, with what a plot needs to show it.

    Args:
        name: registry key, e.g. ``"saddle"``.
        f: batched and differentiable: maps ``(..., dim)`` to ``(...)``.
        dim: 1 or 2.
        xlim: plotting window of the first coordinate.
        ylim: plotting window of the second coordinate (2-D) or of ``f(w)`` (1-D).
        starts: default start points, each a tuple of ``dim`` floats.
        stationary: the known stationary points, for annotation and for describing where a run ended.
        formula: the formula in plain text, for titles.

    Shapes:
        ``f``: ``(..., dim) -> (...)``.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    dim: int
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    starts: tuple[tuple[float, ...], ...]
    stationary: tuple[StationaryPoint, ...]
    formula: str = ""

    def __post_init__(self) -> None:
        if self.dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {self.dim}")
        for lim, label in ((self.xlim, "xlim"), (self.ylim, "ylim")):
            if len(lim) != 2 or not lim[0] < lim[1]:
                raise ValueError(f"{label} must be (low, high) with low < high, got {lim}")
        for p in (*self.starts, *(s.point for s in self.stationary)):
            if len(p) != self.dim:
                raise ValueError(f"point {p} of objective {self.name!r} must have {self.dim} coordinate(s)")

    def value_and_grad(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``f(w)`` and ``∇f(w)`` at a single point ``w`` of shape ``(dim,)``, both detached.

        Uses ``torch.autograd.grad`` on a detached copy, so ``w`` and its ``.grad`` are left alone.
        """
        if w.shape != (self.dim,):
            raise ValueError(f"w must have shape ({self.dim},), got {tuple(w.shape)}")
        x = w.detach().clone().requires_grad_(True)
        loss = self.f(x)
        (grad,) = torch.autograd.grad(loss, x)
        return loss.detach(), grad


def _saddle(w: Tensor) -> Tensor:
    return w[..., 0] ** 2 - w[..., 1] ** 2


def _cubic_saddle(w: Tensor) -> Tensor:
    return w[..., 0] ** 2 + w[..., 1] ** 3


def _cubic(w: Tensor) -> Tensor:
    x = w[..., 0]
    return x**3 + x**2 - 5 * x


def _rosenbrock(w: Tensor) -> Tensor:
    return (1 - w[..., 0]) ** 2 + 100 * (w[..., 1] - w[..., 0] ** 2) ** 2


def _quadratic(w: Tensor, *, kappa: float) -> Tensor:
    return 0.5 * (w[..., 0] ** 2 + kappa * w[..., 1] ** 2)


def ill_conditioned(kappa: float = 50.0) -> Objective:
    """The quadratic ``0.5 (w1^2 + kappa w2^2)``: curvatures 1 and ``kappa``, condition number ``kappa``.

    Gradient descent is stable only for ``lr < 2 / kappa`` and then crawls along ``w1`` at rate ``1 - lr``;
    that gap is why it zig-zags and why momentum helps.

    Args:
        kappa: the curvature ratio, finite and ``> 0`` (the registered objective uses 50).

    Raises:
        ValueError: if ``kappa`` is not finite and ``> 0``.
    """
    kappa = float(kappa)
    if not (0 < kappa < float("inf")):
        raise ValueError(f"kappa must be finite and > 0, got {kappa}")
    return Objective(
        name="ill-conditioned",
        f=functools.partial(_quadratic, kappa=kappa),
        dim=2,
        xlim=(-5.0, 5.0),
        ylim=(-1.5, 1.5),
        starts=((-4.0, 1.0),),
        stationary=(StationaryPoint((0.0, 0.0), "min"),),
        formula=f"0.5 (w1^2 + {kappa:g} w2^2)",
    )


OBJECTIVES: dict[str, Objective] = {
    "saddle": Objective(
        name="saddle",
        f=_saddle,
        dim=2,
        xlim=(-1.5, 1.5),
        ylim=(-1.5, 1.5),
        starts=((1.0, 0.0),),
        stationary=(StationaryPoint((0.0, 0.0), "saddle"),),
        formula="w1^2 - w2^2",
    ),
    "cubic-saddle": Objective(
        name="cubic-saddle",
        f=_cubic_saddle,
        dim=2,
        xlim=(-1.5, 1.5),
        ylim=(-1.5, 1.5),
        starts=((1.0, 0.5), (1.0, -0.5)),
        stationary=(StationaryPoint((0.0, 0.0), "saddle", note="degenerate"),),
        formula="w1^2 + w2^3",
    ),
    "cubic": Objective(
        name="cubic",
        f=_cubic,
        dim=1,
        xlim=(-3.0, 2.5),
        ylim=(-6.0, 12.0),
        starts=((0.0,), (-2.0,)),
        stationary=(StationaryPoint((1.0,), "min"), StationaryPoint((-5.0 / 3.0,), "max")),
        formula="w^3 + w^2 - 5w",
    ),
    "rosenbrock": Objective(
        name="rosenbrock",
        f=_rosenbrock,
        dim=2,
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        starts=((-1.2, 1.0),),
        stationary=(StationaryPoint((1.0, 1.0), "min"),),
        formula="(1 - w1)^2 + 100 (w2 - w1^2)^2",
    ),
    "ill-conditioned": ill_conditioned(50.0),
}


def get_objective(name: str | Objective) -> Objective:
    """The registered objective called ``name`` (an :class:`Objective` is returned as is).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the choices.
    """
    if isinstance(name, Objective):
        return name
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
