"""The Square attack: a gradient-free random search over square-shaped updates, with a budget of queries."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from trustlab.attacks.apgd import _check_loss
from trustlab.attacks.base import (
    check_attack_args,
    check_logits,
    check_model,
    check_threat,
    eval_mode,
    first_forward,
    threat_dict,
    warn_if_training,
)
from trustlab.attacks.losses import get_loss, is_adversarial, objective
from trustlab.attacks.pgd import DEFAULT_SEED
from trustlab.errors import NumericalError
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = [
    "square",
    "square_with_queries",
    "Square",
    "SquareResult",
    "p_schedule",
    "side_length",
    "side_length_l2",
    "pseudo_gaussian",
    "meta_pseudo_gaussian",
    "HALVINGS",
]

# iterations (per 10,000) after which p halves: the piecewise-constant schedule of the reference code
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SCHEDULE_LENGTH = 10_000  # the schedule is written for 10,000 iterations and rescaled to the budget


class SquareResult(NamedTuple):
    """What :func:`square_with_queries` returns: the adversarial inputs and the queries each example used."""

    x_adv: Tensor  # (N, *D)
    queries: Tensor  # (N,) int64: forward passes of the model on that example, the first (clean) one included


def p_schedule(i: int, queries: int, p_init: float) -> float:
    """``p`` at iteration ``i`` (0-based) of a budget of ``queries``: ``p_init`` halved once per point of
    :data:`HALVINGS` that ``i`` has passed, on the 10,000-iteration scale (``i * 10000 // queries``).

    The reference code computes ``int(i / queries * 10000)``; the integer division here is the same number
    without rounding error.
    """
    it = i * _SCHEDULE_LENGTH // queries
    return p_init / 2 ** sum(it > h for h in HALVINGS)


def side_length(p: float, height: int, width: int) -> int:
    """The side ``s`` of the square updated: ``round(sqrt(p * n_features / c))`` (``n_features / c = height *
    width``, so a square covers about a fraction ``p`` of the image), at least 1 and at most
    ``min(height, width) - 1``, as in the reference code."""
    return min(max(round(math.sqrt(p * height * width)), 1), min(height, width) - 1)


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    y_target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The Square attack (Andriushchenko et al. 2020, Algorithm 1): random search, no gradients; l_inf
    (Algorithm 2) or l_2 (Algorithm 3).

    It only reads the model's outputs; no gradient is ever computed::

        x_hat = init(x)
        l* = L(f(x_hat), y)
        while i < N and x_hat is not adversarial:
            s = side(p_schedule(i))                      the square shrinks as the budget is spent
            x_new = Proj_{B(x, eps) ∩ box}(x_hat + delta(s))
            if L(f(x_new), y) improves on l*: x_hat, l* = x_new, L(f(x_new), y)

    - l_inf: ``init`` is vertical stripes, ``x + eps * (+-1 per channel and column)``; ``delta`` is ``+-2 eps``
      on one ``s x s`` square at a uniform position, one sign per channel (Algorithm 2), ``s`` from
      :func:`side_length`. A sign that would leave ``x_hat`` unchanged is drawn again (as in the reference
      code), so no query is spent on a point already evaluated.
    - l_2: ``init`` is a grid of squares, each ``+-M`` (the meta pseudo-Gaussian square of
      :func:`meta_pseudo_gaussian`, mass centred in two halves of opposite sign), scaled to ``||delta||_2 =
      eps`` (Sec. 3.2); ``delta`` moves the mass of ``nu = x_hat - x`` on two ``s x s`` windows ``W1, W2``
      (and any budget left unused by the box) onto ``W1``, in the direction ``+-M + nu_W1 / ||nu_W1||``, and
      zeroes ``W2``, keeping ``||nu||_2 = eps`` (Algorithm 3, per channel); ``s`` from :func:`side_length_l2`.

    ``L`` is the attack objective, maximized here (the paper minimizes its negative): by default the margin
    ``max_{j != y} z_j - z_y``, positive exactly when ``x_hat`` is misclassified. A candidate is accepted when
    it is adversarial and ``x_hat`` is not, or when its objective is strictly higher (for the margin loss this
    is the paper's rule).

    Queries: the first is the clean ``x``; an example already misclassified (or at its target) is returned as it
    is after that one query. The initialization is the second, and each iteration costs one query on each
    example not yet broken; an example stops as soon as it is broken, and none gets more than ``queries``
    forward passes (``queries - 2`` iterations at most).

    Args:
        model: maps ``(N, C, H, W)`` to logits ``(N, K)``; run in eval mode (warned if it is not), mode restored.
        x: clean images inside ``[threat.lower, threat.upper]``, ``H, W >= 2``; not modified.
        y: true labels ``(N,)``.
        threat: an l_inf or l_2 ball.
        queries: the budget of forward passes per example (``>= 1``), the clean one included.
        p_init: the fraction of pixels of the first squares, in ``(0, 1]``; it halves on the schedule of
            :func:`p_schedule`.
        loss: a key of :data:`trustlab.attacks.LOSSES` (``"dlr-targeted"`` needs ``y_target``).
        y_target: if given, a targeted attack: success is ``argmax == y_target``.
        generator: the source of all randomness; ``None`` uses one seeded with ``DEFAULT_SEED`` (0).

    Returns:
        ``x_adv`` with the shape, dtype and device of ``x``, in the ball and the box; ``eps = 0`` returns a copy
        of ``x`` (and spends no query). :func:`square_with_queries` also returns the queries spent.

    Raises:
        TypeError, ValueError: invalid arguments, or ``x`` not of shape ``(N, C, H, W)`` with ``H, W >= 2``.
        NumericalError: NaN or Inf in the logits or the objective.

    Shapes:
        x (N, C, H, W), y (N,), y_target (N,) or None -> x_adv (N, C, H, W).

    Reference:
        Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack
        via random search", ECCV 2020, arXiv:1912.00049, Algorithms 1 and 2 (l_inf), 3 (l_2), Sec. 3 (the
        schedule of p, the l_2 initialization and Eq. (2), the pseudo-Gaussian square); the rescaled schedule,
        the side lengths and the grid of the l_2 initialization follow the authors' code
        (github.com/max-andr/square-attack).
    """
    return _square(model, x, y, threat, queries=queries, p_init=p_init, loss=loss, y_target=y_target,
                   generator=generator).x_adv


def square_with_queries(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    y_target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SquareResult:
    """:func:`square`, also returning the queries spent on each example. Arguments and errors as there.

    Returns:
        :class:`SquareResult` ``(x_adv, queries)``: ``x_adv`` as :func:`square` returns it; ``queries`` the
        forward passes of ``model`` on each example, the clean one included (all 0 when ``eps = 0``).

    Shapes:
        x (N, C, H, W), y (N,), y_target (N,) or None -> x_adv (N, C, H, W), queries (N,) int64.
    """
    return _square(model, x, y, threat, queries=queries, p_init=p_init, loss=loss, y_target=y_target,
                   generator=generator)


def _square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: LpBall,
    *,
    queries: int,
    p_init: float,
    loss: str,
    y_target: Tensor | None,
    generator: torch.Generator | None,
) -> SquareResult:
    """Validate, then run Algorithm 1 with the update of the threat's norm in eval mode without autograd."""
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    queries, p_init = _check_queries(queries), _check_p_init(p_init)
    _check_loss(loss, targeted=y_target is not None)
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"square needs images x of shape (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
    if threat.eps == 0:
        return SquareResult(x.clone(), torch.zeros(len(x), dtype=torch.int64, device=x.device))
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=3)  # the user's call of square or square_with_queries
    x = x.detach()
    n, c, h, w = x.shape
    with eval_mode(model), torch.no_grad():
        if threat.p == math.inf:
            lo, hi = threat.box(x)  # the feasible set of l_inf is the box [lo, hi]; Proj(x_hat +- 2 eps) is a corner

            def init(idx: Tensor) -> Tensor:  # vertical stripes: one sign per channel and column
                up = torch.randint(0, 2, (len(idx), c, 1, w), generator=generator, device=x.device).bool()
                return torch.where(up, hi[idx], lo[idx])

            def step(i: int, idx: Tensor, x_hat: Tensor) -> Tensor:
                s = side_length(p_schedule(i, queries, p_init), h, w)
                return _square_update(x_hat, lo[idx], hi[idx], s, generator)
        else:
            def init(idx: Tensor) -> Tensor:
                return _init_l2(x[idx], threat, generator)

            def step(i: int, idx: Tensor, x_hat: Tensor) -> Tensor:
                s = side_length_l2(p_schedule(i, queries, p_init), h, w)
                return _square_update_l2(x_hat, x[idx], threat, s, generator)

        return _random_search(model, x, y, y_target, queries=queries, loss=loss, init=init, step=step)


def _random_search(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_target: Tensor | None,
    *,
    queries: int,
    loss: str,
    init: Callable[[Tensor], Tensor],
    step: Callable[[int, Tensor, Tensor], Tensor],
) -> SquareResult:
    """Algorithm 1 on every example at once; each iteration queries only the examples not yet broken.

    ``init(idx)`` is the first point of the examples ``idx``; ``step(i, idx, x_hat)`` the candidate of iteration
    ``i`` from their current points ``x_hat`` (Algorithm 2 for l_inf, 3 for l_2), both already in the threat.
    """
    n = len(x)
    n_queries = torch.ones(n, dtype=torch.int64, device=x.device)
    nonfinite: list[Tensor] = []

    def evaluate(idx: Tensor, x_q: Tensor) -> tuple[Tensor, Tensor]:
        """One query on the examples ``idx``: whether ``x_q`` is adversarial, and its objective."""
        logits = model(x_q)
        t = None if y_target is None else y_target[idx]
        obj = objective(logits, y[idx], y_target=t, loss=loss)
        nonfinite.append(~torch.isfinite(logits.sum() + obj.sum()))
        n_queries[idx] += 1
        return is_adversarial(logits, y[idx], y_target=t), obj

    logits = first_forward(model, x)  # query 1: the clean point
    check_logits(logits, y, y_target)
    nonfinite.append(~torch.isfinite(logits.sum()))
    success = is_adversarial(logits, y, y_target=y_target)
    x_best = x.clone()
    obj_best = torch.full((n,), -torch.inf, dtype=logits.dtype, device=x.device)
    if queries >= 2:  # query 2: the initialization, accepted whatever its loss (line 1 of Algorithm 1)
        idx = (~success).nonzero().squeeze(1)
        x_best[idx] = init(idx)
        success[idx], obj_best[idx] = evaluate(idx, x_best[idx])
    for i in range(queries - 2):
        idx = (~success).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        x_new = step(i, idx, x_best[idx])
        adv, obj = evaluate(idx, x_new)
        accept = adv | (obj > obj_best[idx])  # the examples at idx are not adversarial yet
        x_best[idx] = torch.where(accept.view(-1, 1, 1, 1), x_new, x_best[idx])
        obj_best[idx] = torch.where(accept, obj, obj_best[idx])
        success[idx] = adv
    bad = torch.stack(nonfinite).nonzero()
    if len(bad):
        raise NumericalError(f"non-finite logits or objective at Square query {int(bad[0, 0]) + 1} of {queries}")
    return SquareResult(x_best, n_queries)


def _square_update(x_hat: Tensor, lo: Tensor, hi: Tensor, s: int, generator: torch.Generator) -> Tensor:
    """``Proj(x_hat + delta)`` for ``delta`` of Algorithm 2: one ``s x s`` square per example at a uniform
    position ``r, t in {0, ..., H - s}, {0, ..., W - s}``, ``+-2 eps`` with one sign per channel, which moves
    the square to the upper or lower corner of the feasible box. Signs that change nothing are drawn again.

    Shapes:
        x_hat, lo, hi (M, C, H, W) -> (M, C, H, W).
    """
    m, c, h, w = x_hat.shape
    dev = x_hat.device
    r = torch.randint(0, h - s + 1, (m, 1), generator=generator, device=dev)
    t = torch.randint(0, w - s + 1, (m, 1), generator=generator, device=dev)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows, in_cols = (rows >= r) & (rows < r + s), (cols >= t) & (cols < t + s)  # (M, H), (M, W)
    window = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (M, 1, H, W)
    up = torch.randint(0, 2, (m, c, 1, 1), generator=generator, device=dev).bool()
    x_new = torch.where(window, torch.where(up, hi, lo), x_hat)
    # a channel with hi > lo somewhere in its square is moved by one of its two signs, so the loop ends; where
    # hi == lo on the whole square (eps below the float resolution of x) nothing can move and nothing is redrawn
    movable = (window & (hi > lo)).flatten(1).any(1)
    same = (x_new == x_hat).flatten(1).all(1) & movable
    while same.any():
        j = same.nonzero().squeeze(1)
        up[j] = torch.randint(0, 2, (len(j), c, 1, 1), generator=generator, device=dev).bool()
        x_new[j] = torch.where(window[j], torch.where(up[j], hi[j], lo[j]), x_hat[j])
        same[j] = (x_new[j] == x_hat[j]).flatten(1).all(1)  # movable[j] holds
    return x_new


def side_length_l2(p: float, height: int, width: int) -> int:
    """The side ``s`` of the two windows of the l_2 update: :func:`side_length`'s ``round(sqrt(p * height *
    width))`` but at least 3 and odd (``s + 1`` if even), as in the reference code, and at most
    ``min(height, width)``."""
    s = max(round(math.sqrt(p * height * width)), 3)
    return min(s + 1 - s % 2, height, width)


def pseudo_gaussian(r: int, s: int) -> Tensor:
    """``eta^(r, s)`` of Eq. (2): an ``r x s`` rectangle of nested rings around its centre ``(r // 2, s // 2)``;
    ring ``k`` (the entries at Chebyshev distance ``k`` from the centre) holds ``sum_{j = k}^{K - 1} 1 / (j +
    1)^2`` with ``K = max(r, s) // 2 + 1`` rings, so the mass peaks in the centre. Unit l_2 norm (empty if ``r
    = 0``); float64 on the CPU.

    Shapes:
        -> (r, s).
    """
    rows, cols = torch.arange(r).view(-1, 1), torch.arange(s).view(1, -1)
    ring = torch.maximum((rows - r // 2).abs(), (cols - s // 2).abs())  # (r, s)
    k = torch.arange(max(r, s) // 2 + 1, dtype=torch.float64)
    eta = ((k >= ring[..., None]) / (k + 1) ** 2).sum(-1)  # (r, s, K) -> (r, s)
    return eta / eta.norm() if r else eta


def meta_pseudo_gaussian(s: int) -> Tensor:
    """The ``s x s`` update square of the l_2 attack: ``eta^(s // 2, s)`` on the top rows and ``-eta^(s - s //
    2, s)`` on the bottom ones, normalized to unit l_2 norm, so mass moves between two halves of opposite sign
    (Sec. 3.2; the attack transposes it with probability 1/2). float64 on the CPU.

    Shapes:
        -> (s, s).
    """
    eta = torch.cat([pseudo_gaussian(s // 2, s), -pseudo_gaussian(s - s // 2, s)])
    return eta / eta.norm()


def _random_transpose(m: int, s: int, x: Tensor, generator: torch.Generator) -> Tensor:
    """``M(s)`` or its transpose, each with probability 1/2, per example, in the dtype and device of ``x``.

    Shapes:
        -> (m, 1, s, s).
    """
    eta = meta_pseudo_gaussian(s).to(dtype=x.dtype, device=x.device)
    flip = torch.randint(0, 2, (m, 1, 1, 1), generator=generator, device=x.device).bool()
    return torch.where(flip, eta.T, eta)


def _random_sign(shape: tuple[int, ...], x: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform +-1 of the dtype and device of ``x``."""
    return torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def _init_l2(x: Tensor, threat: LpBall, generator: torch.Generator) -> Tensor:
    """The l_2 initialization (Sec. 3.2): a grid of ``s x s`` tiles, ``s = min(H, W) // 5`` (at least 1), from
    ``(size - 5 s) // 2`` along each side, as many as fit wholly (5 x 5 tiles on 28 x 28 or 32 x 32 images,
    as in the reference code), each ``+-M(s)`` with one sign per channel; scaled to ``||delta||_2 = eps`` and
    projected into the threat.

    Shapes:
        x (M, C, H, W) -> (M, C, H, W).
    """
    m, c, h, w = x.shape
    s = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x)
    for r in range(max((h - 5 * s) // 2, 0), h - s + 1, s):
        for t in range(max((w - 5 * s) // 2, 0), w - s + 1, s):
            tile = _random_transpose(m, s, x, generator) * _random_sign((m, c, 1, 1), x, generator)
            delta[:, :, r:r + s, t:t + s] = tile
    return threat.project(x + threat.eps * delta / _norm(delta), x)


def _square_update_l2(x_hat: Tensor, x: Tensor, threat: LpBall, s: int, generator: torch.Generator) -> Tensor:
    """``Proj(x + eps * nu' / ||nu'||_2)`` for ``nu'`` of Algorithm 3, from ``nu = x_hat - x``: two ``s x s``
    windows ``W1, W2`` at uniform positions; per channel ``i`` the mass of ``nu`` on ``W1 ∪ W2`` plus an equal
    share of the unused budget, ``eps_avail = sqrt(||nu_{W1 ∪ W2, i}||^2 + (eps^2 - ||nu||^2)_+ / c)``, goes
    onto ``W1`` in the direction ``rho M + nu_{W1, i} / ||nu_{W1, i}||`` (``rho = +-1``, ``M`` the meta
    pseudo-Gaussian square), and ``W2`` is zeroed, so ``||nu'||_2 = eps``; rescaling to ``eps`` only removes
    rounding, and the projection clips to the box.

    Shapes:
        x_hat, x (M, C, H, W) -> (M, C, H, W).
    """
    m, c, h, w = x.shape
    nu = x_hat - x
    unused = (threat.eps ** 2 - nu.flatten(1).pow(2).sum(1)).clamp_min(0).view(-1, 1, 1, 1)  # (M, 1, 1, 1)
    (rows1, cols1, window1), (_, _, window2) = _random_window(x, s, generator), _random_window(x, s, generator)
    avail = ((nu * (window1 | window2)).pow(2).sum((2, 3), keepdim=True) + unused / c).sqrt()  # (M, C, 1, 1)
    rho = _random_sign((m, c, 1, 1), x, generator)
    at1 = (torch.arange(m, device=x.device).view(-1, 1, 1, 1), torch.arange(c, device=x.device).view(1, -1, 1, 1),
           rows1[:, None, :, None], cols1[:, None, None, :])  # W1 of every channel: nu[at1] is (M, C, s, s)
    temp = rho * _random_transpose(m, s, x, generator) + nu[at1] / _norm(nu[at1], dims=(2, 3))
    nu = nu.masked_fill(window2, 0)
    nu[at1] = temp / _norm(temp, dims=(2, 3)) * avail
    return threat.project(x + threat.eps * nu / _norm(nu), x)


def _random_window(x: Tensor, s: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """An ``s x s`` window per example at a uniform position ``r, t in {0, ..., H - s}, {0, ..., W - s}``:
    its rows, its columns and its mask.

    Shapes:
        x (M, C, H, W) -> rows (M, s), cols (M, s), mask (M, 1, H, W).
    """
    m, _, h, w = x.shape
    dev = x.device
    r = torch.randint(0, h - s + 1, (m, 1), generator=generator, device=dev)
    t = torch.randint(0, w - s + 1, (m, 1), generator=generator, device=dev)
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_rows, in_cols = (rows >= r) & (rows < r + s), (cols >= t) & (cols < t + s)  # (M, H), (M, W)
    steps = torch.arange(s, device=dev)
    return r + steps, t + steps, in_rows[:, None, :, None] & in_cols[:, None, None, :]


def _norm(v: Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> Tensor:
    """The l_2 norm over ``dims``, kept as size-1 dimensions, at least the smallest normal number of the dtype
    (a zero part stays zero when divided by it)."""
    return v.pow(2).sum(dims, keepdim=True).sqrt().clamp_min(torch.finfo(v.dtype).tiny)


def _check_queries(queries: object) -> int:
    """``queries`` must be an int ``>= 1`` (the clean query is one of them)."""
    return check_positive_int(queries, "queries", minimum=1)


def _check_p_init(p_init: object) -> float:
    """``p_init`` must be a number in ``(0, 1]``."""
    value = check_nonneg_float(p_init, "p_init", positive=True)
    if value > 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    return value


@dataclass(frozen=True)
class Square:
    """Configuration of :func:`square` for the CLI and training loops (holds no model)."""

    threat: LpBall
    queries: int = 5000
    p_init: float = 0.8
    loss: str = "margin"

    name: ClassVar[str] = "square"

    def __post_init__(self) -> None:
        check_threat(self.threat)
        _check_queries(self.queries)
        object.__setattr__(self, "p_init", _check_p_init(self.p_init))
        get_loss(self.loss)

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run :func:`square` with this configuration."""
        return square(model, x, y, self.threat, queries=self.queries, p_init=self.p_init, loss=self.loss,
                      y_target=y_target, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """Every hyperparameter, flat, with the fixed schedule, for run records."""
        return {
            "attack": self.name,
            **threat_dict(self.threat),
            "queries": self.queries,
            "p_init": self.p_init,
            "loss": self.loss,
            "p_halvings_per_10000": list(HALVINGS),
            "init": "vertical stripes" if self.threat.p == math.inf else "pseudo-gaussian squares",
        }
