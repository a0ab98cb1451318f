"""The threat model: an l_p ball intersected with the input box.

``LpBall(eps, p, lower, upper)`` is the set ``{x' : ||x' - x||_p <= eps, lower <= x' <= upper}``. It is a
frozen value shared by attacks, training, certification and reports; a norm is just the few operations below,
so the PGD loop is written once (cf. foolbox ``gradient_descent_base.py``, cleverhans ``optimize_linear``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LpBall", "ShardedBall", "parse_p"]

_SUPPORTED_P = (math.inf, 2.0)
_TINY = 1e-12
_EPS_MAX = float(torch.finfo(torch.float32).max)


def parse_p(p: float | int | str) -> float:
    """Turn ``"inf"``, ``"linf"``, ``2``, ``"l2"`` into ``math.inf`` or ``2.0`` (CLI boundary helper)."""
    if isinstance(p, str):
        key = p.strip().lower().removeprefix("l")
        if key in ("inf", "infty", "infinity"):
            return math.inf
        try:
            p = float(key)
        except ValueError:
            raise ValueError(f"p must be 'inf' or 2, got {p!r}") from None
    p = float(p)
    if p not in _SUPPORTED_P:
        raise ValueError(f"p must be inf or 2, got {p}")
    return p


@dataclass(frozen=True)
class LpBall:
    """``{x' : ||x' - x||_p <= eps} ∩ [lower, upper]^d``, the perturbation set of one example.

    Args:
        eps: radius of the ball, ``>= 0`` and finite. ``eps = 0`` makes every attack the identity.
        p: ``math.inf`` or ``2.0``.
        lower: smallest valid input value (the box), or ``None`` for no lower limit.
        upper: largest valid input value, or ``None``.

    Shapes:
        Every method takes batches ``(N, *D)``; norms are taken per example over ``*D``.
    """

    eps: float
    p: float = math.inf
    lower: float | None = 0.0
    upper: float | None = 1.0

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        if eps > _EPS_MAX:  # torch cannot clamp a float32 tensor by it (a RuntimeError deep inside an attack)
            raise ValueError(f"eps must be at most {_EPS_MAX:.3g} (the largest float32), got {eps}")
        object.__setattr__(self, "eps", float(eps))
        object.__setattr__(self, "p", parse_p(self.p))
        for name in ("lower", "upper"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number or None, got {v!r}")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(f"lower must be < upper, got lower={self.lower}, upper={self.upper}")

    # -- norms ---------------------------------------------------------------------------------------
    def norm(self, delta: Tensor) -> Tensor:
        """Per-example ``||delta||_p``: ``(N, *D) -> (N,)``."""
        flat = delta.flatten(1)
        if self.p == math.inf:
            return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
        return flat.norm(p=2, dim=1)

    def clip_to_box(self, x_adv: Tensor) -> Tensor:
        """Clamp to ``[lower, upper]`` (no-op for a side that is ``None``)."""
        if self.lower is None and self.upper is None:
            return x_adv
        return x_adv.clamp(min=self.lower, max=self.upper)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Map ``x_adv`` into the ball around ``x``, then into the box.

        For p = inf this is the exact Euclidean projection onto the intersection (both are boxes). For p = 2
        the ball projection followed by clipping stays feasible (clipping toward the box never leaves a ball
        whose centre lies in the box), which is what PGD needs.
        """
        delta = x_adv - x
        if self.p == math.inf:
            delta = delta.clamp(-self.eps, self.eps)
        else:
            n = self.norm(delta).clamp_min(_TINY)
            factor = (self.eps / n).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return self.clip_to_box(x + delta)

    def random_init(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """A random point of the ball around ``x`` (uniform in the l_inf cube, uniform in the l_2 ball), in the box."""
        return self.clip_to_box(x + self.random_delta(x.shape, generator=generator, device=x.device, dtype=x.dtype))

    def random_delta(self, shape: torch.Size | tuple[int, ...], *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """A uniform draw from the ball itself (not clipped to the box), one per example of a batch of ``shape``."""
        shape = torch.Size(shape)
        if self.p == math.inf:
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return (2 * u - 1) * self.eps
        g = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        direction = g / self.norm(g).clamp_min(_TINY).view(-1, *([1] * (len(shape) - 1)))
        d = math.prod(shape[1:])
        r = torch.rand(shape[0], generator=generator, device=device, dtype=dtype) ** (1.0 / max(d, 1))
        return direction * (self.eps * r).view(-1, *([1] * (len(shape) - 1)))

    def gaussian(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal draws of ``x``'s shape, dtype and device: the Gaussian noise of a training objective
        (TRADES' start, noise augmentation), drawn through the threat so that a :class:`ShardedBall` draws the
        global batch's noise."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """``argmax_{||d||_p <= 1} <d, grad>``: ``sign(grad)`` for p = inf, ``grad / ||grad||_2`` for p = 2."""
        if self.p == math.inf:
            return grad.sign()
        n = self.norm(grad).clamp_min(_TINY)
        return grad / n.view(-1, *([1] * (grad.dim() - 1)))

    def contains(self, x_adv: Tensor, x: Tensor, *, atol: float = 1e-6) -> Tensor:
        """``(N,)`` bool: ``x_adv`` lies in the ball (up to ``atol``, relative for p = 2) and exactly in the box."""
        tol = atol if self.p == math.inf else atol * max(self.eps, 1.0)
        inside = self.norm(x_adv - x) <= self.eps + tol
        flat = x_adv.flatten(1)
        if self.lower is not None:
            inside &= (flat >= self.lower).all(dim=1)
        if self.upper is not None:
            inside &= (flat <= self.upper).all(dim=1)
        return inside

    def box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise bounds containing the set: exact for p = inf, an outer box for p = 2."""
        lo, hi = x - self.eps, x + self.eps
        return self.clip_to_box(lo), self.clip_to_box(hi)


@dataclass(frozen=True)
class ShardedBall(LpBall):
    """The threat of one rank's rows ``[start, start + rows)`` of a global batch of ``total`` examples in a
    distributed training step: the same ball, whose random draws (:meth:`random_init`, :meth:`gaussian`) are
    this slice of the draws the single process makes for the whole batch from the same generator. So the ranks,
    each drawing the global batch's noise and keeping its rows, start their attacks where one process would,
    and their generators stay in step with its stream.

    Raises:
        ValueError: a slice outside ``[0, total]``; at a draw, a batch that is not the slice's ``rows`` long (an
            attack's restart on the examples left, which a global draw cannot reproduce).
    """

    start: int = 0
    rows: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.start <= self.start + self.rows <= self.total:
            raise ValueError(f"rows [{self.start}, {self.start + self.rows}) must lie in [0, {self.total}]")

    @classmethod
    def of(cls, threat: LpBall, *, start: int, rows: int, total: int) -> "ShardedBall":
        """``threat`` restricted to rows ``[start, start + rows)`` of a batch of ``total``."""
        return cls(threat.eps, threat.p, threat.lower, threat.upper, start=start, rows=rows, total=total)

    def _global(self, x: Tensor) -> tuple[int, ...]:
        if len(x) != self.rows:
            raise ValueError(f"a sharded threat draws for its {self.rows} rows only, got a batch of {len(x)} "
                             "(attack restarts on a subset are not supported in distributed training)")
        return (self.total, *x.shape[1:])

    def random_init(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        delta = self.random_delta(self._global(x), generator=generator, device=x.device, dtype=x.dtype)
        return self.clip_to_box(x + delta[self.start : self.start + self.rows])

    def gaussian(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self._global(x), generator=generator, device=x.device, dtype=x.dtype)
        return noise[self.start : self.start + self.rows]
