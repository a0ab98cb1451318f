"""The Square attack: a gradient-free random search over square-shaped updates, with a budget of queries."""

from __future__ import annotations

import math
from dataclasses import dataclass
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

__all__ = ["square", "square_with_queries", "Square", "SquareResult", "p_schedule", "side_length", "HALVINGS"]

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
    """The l_inf Square attack (Andriushchenko et al. 2020, Algorithm 1): random search, no gradients.

    It only reads the model's outputs; no gradient is ever computed::

        x_hat = init(x)                                  vertical stripes: x + eps * (+-1 per channel and column)
        l* = L(f(x_hat), y)
        while i < N and x_hat is not adversarial:
            s = side_length(p_schedule(i))               the square shrinks as the budget is spent
            delta = +-2 eps on one s x s square at a uniform position, one sign per channel (Algorithm 2)
            x_new = Proj_{B(x, eps) ∩ box}(x_hat + delta)
            if L(f(x_new), y) improves on l*: x_hat, l* = x_new, L(f(x_new), y)

    ``L`` is the attack objective, maximized here (the paper minimizes its negative): by default the margin
    ``max_{j != y} z_j - z_y``, positive exactly when ``x_hat`` is misclassified. A candidate is accepted when
    it is adversarial and ``x_hat`` is not, or when its objective is strictly higher (for the margin loss this
    is the paper's rule). As in the reference code, a sign that would leave ``x_hat`` unchanged is drawn again,
    so no query is spent on a point already evaluated.

    Queries: the first is the clean ``x``; an example already misclassified (or at its target) is returned as it
    is after that one query. The initialization is the second, and each iteration costs one query on each
    example not yet broken; an example stops as soon as it is broken, and none gets more than ``queries``
    forward passes (``queries - 2`` iterations at most).

    Args:
        model: maps ``(N, C, H, W)`` to logits ``(N, K)``; run in eval mode (warned if it is not), mode restored.
        x: clean images inside ``[threat.lower, threat.upper]``, ``H, W >= 2``; not modified.
        y: true labels ``(N,)``.
        threat: an l_inf ball (the l_2 version, Algorithm 3, is not implemented yet).
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
        TypeError, ValueError: invalid arguments, a threat with ``p != inf``, or ``x`` not of shape
            ``(N, C, H, W)`` with ``H, W >= 2``.
        NumericalError: NaN or Inf in the logits or the objective.

    Shapes:
        x (N, C, H, W), y (N,), y_target (N,) or None -> x_adv (N, C, H, W).

    Reference:
        Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack
        via random search", ECCV 2020, arXiv:1912.00049, Algorithms 1 and 2 (l_inf), Sec. 3 (the schedule of
        p); the rescaled schedule and the side length follow the authors' code (github.com/max-andr/square-attack).
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
    """Validate, then run Algorithm 1 in eval mode without autograd."""
    check_model(model)
    check_attack_args(x, y, threat, y_target)
    queries, p_init = _check_queries(queries), _check_p_init(p_init)
    _check_loss(loss, targeted=y_target is not None)
    _check_threat_p(threat)
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"square needs images x of shape (N, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
    if threat.eps == 0:
        return SquareResult(x.clone(), torch.zeros(len(x), dtype=torch.int64, device=x.device))
    generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(DEFAULT_SEED)
    warn_if_training(model, stacklevel=3)  # the user's call of square or square_with_queries
    with eval_mode(model), torch.no_grad():
        return _square_linf(model, x.detach(), y, y_target, threat=threat, queries=queries, p_init=p_init,
                            loss=loss, generator=generator)


def _square_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    y_target: Tensor | None,
    *,
    threat: LpBall,
    queries: int,
    p_init: float,
    loss: str,
    generator: torch.Generator,
) -> SquareResult:
    """Algorithm 1 on every example at once; each iteration queries only the examples not yet broken."""
    n, c, h, w = x.shape
    lo, hi = threat.box(x)  # the feasible set of l_inf is the box [lo, hi]; Proj(x_hat +- 2 eps) is one corner
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
    if queries >= 2:  # query 2: the vertical stripes, accepted whatever their loss (line 1 of Algorithm 1)
        idx = (~success).nonzero().squeeze(1)
        up = torch.randint(0, 2, (len(idx), c, 1, w), generator=generator, device=x.device).bool()
        x_best[idx] = torch.where(up, hi[idx], lo[idx])
        success[idx], obj_best[idx] = evaluate(idx, x_best[idx])
    for i in range(queries - 2):
        idx = (~success).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        s = side_length(p_schedule(i, queries, p_init), h, w)
        x_new = _square_update(x_best[idx], lo[idx], hi[idx], s, generator)
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


def _check_queries(queries: object) -> int:
    """``queries`` must be an int ``>= 1`` (the clean query is one of them)."""
    return check_positive_int(queries, "queries", minimum=1)


def _check_p_init(p_init: object) -> float:
    """``p_init`` must be a number in ``(0, 1]``."""
    value = check_nonneg_float(p_init, "p_init", positive=True)
    if value > 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    return value


def _check_threat_p(threat: LpBall) -> None:
    """Only the l_inf version (Algorithm 1) exists so far."""
    if threat.p != math.inf:
        raise ValueError(f"square supports p = inf only (the l_2 version, Algorithm 3, is not implemented), "
                         f"got p={threat.p}")


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
        _check_threat_p(self.threat)
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
            "init": "vertical stripes",
        }
