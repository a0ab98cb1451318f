"""The ReLU network over the threat set as a linear program: the triangle relaxation (LP) or the exact MILP.

For ``f = A_L(relu(... relu(A_0(x))))`` and the target ``A_m(a_m)`` (the pre-activations ``z_{m+1}``, or the
logits when ``m = L``), :class:`ReluProgram` has the variables ``x`` (the input), and for every hidden layer
``i = 1 .. m`` the pre-activations ``z_i`` and post-activations ``a_i``, with

- ``z_i = W_{i-1} a_{i-1} + b_{i-1}`` (``a_0 = x``), ``l_i <= z_i <= u_i`` (the intermediate bounds), and ``x``
  in the l_inf ball intersected with the input box;
- a stable ReLU fixed: ``a = z`` where ``l >= 0``, ``a = 0`` where ``u <= 0``;
- an unstable ReLU (``l < 0 < u``) relaxed by its convex hull on ``[l, u]``, the triangle ``a >= 0``, ``a >= z``,
  ``a <= u (z - l) / (u - l)`` (Wong & Kolter 2018, eq. 2; Ehlers 2017), or, in the MILP, made exact with a
  binary ``d``: ``a <= u d``, ``a <= z - l (1 - d)``, ``a >= z``, ``a >= 0`` (Tjeng, Xiao & Tedrake 2019, eq. 6),
  whose big-M constants are the intermediate bounds themselves: the tighter they are, the smaller the search.

Everything is in float64 from the float32 network: each affine block's matrix is read back exactly through its
own back-substitution (:meth:`AffineBlock.backward` on unit rows), and intermediate bounds are widened by a
relative ``1e-6`` so that float32 rounding in computing them cannot cut off a point of the real network.

An LP's optimum is only as good as the solver's tolerances, so :func:`solve_lp` returns a *rigorous* lower bound
from the dual solution HiGHS reports: for any multipliers ``y_ub <= 0`` and ``y_eq``, weak duality gives
``c.v >= b_ub.y_ub + b_eq.y_eq + sum_k min(r_k lb_k, r_k ub_k)`` with ``r = c - A_ub^T y_ub - A_eq^T y_eq`` for
every feasible ``v`` (all variables are bounded). An inexact dual only loosens the bound; it never makes it unsound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize, sparse
from torch import Tensor

from trustlab.certify.backsub import Interval
from trustlab.certify.crown import crown_intermediate
from trustlab.certify.ibp import interval_bounds
from trustlab.certify.network import Network
from trustlab.threat import LpBall

__all__ = [
    "INTERMEDIATE",
    "BOUND_WIDENING",
    "dense_layers",
    "intermediate_bounds",
    "ReluProgram",
    "LPResult",
    "solve_lp",
    "check_linf",
    "widen",
]

INTERMEDIATE = ("interval", "crown", "lp")  # where the intermediate (big-M) bounds come from, loosest first
BOUND_WIDENING = 1e-6  # relative widening of float32 intermediate bounds before they enter a float64 program
_SCIPY_STATUS = {0: "optimal", 1: "limit", 2: "infeasible", 3: "unbounded", 4: "numerical"}


def check_linf(threat: LpBall, method: str) -> None:
    """The LP and the MILP are linear programs: they need the l_inf ball (an l_2 ball is not a polytope)."""
    if not isinstance(threat, LpBall):
        raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
    if threat.p != math.inf:
        raise ValueError(f"{method} supports the l_inf ball only (its feasible set is a polytope), got p={threat.p}; "
                         "use crown or alpha-crown for l_2")


def dense_layers(network: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each affine block ``A_i`` as ``(W_i, b_i)`` in float64, with ``A_i(v) = W_i v + b_i`` on flattened vectors.

    ``W_i`` is read row by row through the block's back-substitution (unit rows on its output), which is exact
    for Linear and Conv layers; ``b_i`` is the block at 0.

    Shapes:
        W_i (n_{i+1}, n_i), b_i (n_{i+1},).
    """
    out = []
    for block in network.blocks:
        n_out, n_in = math.prod(block.out_shape), math.prod(block.in_shape)
        probe = next((p for op in block.ops for p in vars(op).values() if isinstance(p, Tensor)), None)
        dtype = probe.dtype if probe is not None and probe.is_floating_point() else torch.float32
        device = probe.device if probe is not None else torch.device("cpu")
        with torch.no_grad():
            rows = torch.eye(n_out, dtype=dtype, device=device).view(1, n_out, *block.out_shape)
            weight, _ = block.backward(rows)
            bias = block.forward(torch.zeros((1, *block.in_shape), dtype=dtype, device=device))
        out.append((weight.reshape(n_out, n_in).double().cpu().numpy(), bias.reshape(n_out).double().cpu().numpy()))
    return out


def intermediate_bounds(network: Network, x: Tensor, threat: LpBall, how: str, *,
                        layers: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Interval]:
    """Bounds ``(l_i, u_i)`` of the pre-activations ``z_1 .. z_L`` of each example, from ``how``:

    ``"interval"`` (interval arithmetic), ``"crown"`` (back-substitution), or ``"lp"``: layer by layer, the
    minimum and maximum of every neuron over the triangle relaxation built on the LP bounds of the layers below
    (one LP per neuron and side, started from CROWN's bounds and never looser than them; exact for ``z_1``). Only
    the neurons CROWN leaves unstable get LPs: a stable ReLU is modelled exactly (``a = z`` or ``a = 0``) by the LP
    and the MILP, and keeps CROWN's bounds, which are sound; the LPs of an unstable ReLU decide its big-M
    constants and can make it stable. On MNIST's two-hidden-layer nets this skips most of the LPs.

    Shapes:
        x (N, *D) -> l_i, u_i (N, *shape_i).
    """
    if how not in INTERMEDIATE:
        raise ValueError(f"intermediate bounds must be one of {INTERMEDIATE}, got {how!r}")
    with torch.no_grad():
        if how == "interval":
            return interval_bounds(network, x, threat)[0]
        pre = crown_intermediate(network, x, threat)
    if how == "crown" or network.depth < 2:
        return pre
    layers = dense_layers(network) if layers is None else layers
    x_lo, x_hi = (t.flatten(1).double().cpu().numpy() for t in threat.box(x))
    tightened = [[t.clone() for t in pre[0]]]
    for m in range(1, network.depth):
        lo, hi = pre[m][0].flatten(1).clone(), pre[m][1].flatten(1).clone()
        unstable = ((lo < 0) & (hi > 0)).cpu().numpy()  # CROWN's unstable ReLUs: the only ones that get LPs
        eye = np.eye(lo.shape[1])
        for n in range(len(x)):
            prior = [(widen(a[n].flatten().double().cpu().numpy(), b[n].flatten().double().cpu().numpy()))
                     for a, b in tightened]
            program = ReluProgram(layers[: m + 1], x_lo[n], x_hi[n], prior)
            for k in np.flatnonzero(unstable[n]):
                cost, const = program.objective(eye[k])
                low = solve_lp(program, cost, const).lower
                high = -solve_lp(program, -cost, -const).lower
                lo[n, k] = max(float(lo[n, k]), low)
                hi[n, k] = min(float(hi[n, k]), high)
        shape = pre[m][0].shape
        tightened.append([lo.view(shape), hi.view(shape)])
    return [(lo, hi) for lo, hi in tightened]


def widen(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 bounds widened by :data:`BOUND_WIDENING` (relative, plus the same absolute) for float64 programs."""
    pad = BOUND_WIDENING * (1.0 + np.maximum(np.abs(lower), np.abs(upper)))
    return lower - pad, upper + pad


class ReluProgram:
    """The constraints of the network up to block ``m`` (``layers = [(W_0, b_0), ..., (W_m, b_m)]``) around one
    example: LP (triangle relaxation) or MILP (``integer=True``, a binary per unstable ReLU).

    Args:
        layers: ``m + 1`` dense blocks; the last one is the target's (its rows enter through :meth:`objective`).
        x_lo, x_hi: the input box of the example (the l_inf ball intersected with the domain), flattened.
        pre: ``m`` pairs ``(l_i, u_i)`` bounding ``z_1 .. z_m``, flattened, already widened for float32.
        integer: the exact MILP instead of the LP relaxation.

    Attributes:
        x_index: the columns of the input variables; ``unstable``: the unstable ReLUs per hidden layer.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], x_lo: np.ndarray, x_hi: np.ndarray,
                 pre: Sequence[tuple[np.ndarray, np.ndarray]], *, integer: bool = False) -> None:
        if len(pre) != len(layers) - 1:
            raise ValueError(f"{len(layers)} blocks need {len(layers) - 1} pre-activation bounds, got {len(pre)}")
        lb: list[np.ndarray] = [np.asarray(x_lo, dtype=np.float64)]
        ub: list[np.ndarray] = [np.asarray(x_hi, dtype=np.float64)]
        kinds: list[np.ndarray] = [np.zeros(len(lb[0]))]
        eq_r, eq_c, eq_v, eq_b = [], [], [], []
        ub_r, ub_c, ub_v, ub_b = [], [], [], []
        size = len(lb[0])
        prev = np.arange(size)  # the columns of a_{i-1}
        self.unstable: list[np.ndarray] = []

        def add(rows: list, cols: list, vals: list, rhs: list, r_cols: Sequence[np.ndarray],
                r_vals: Sequence[np.ndarray], b: np.ndarray) -> None:
            """Rows ``sum_t r_vals[t][:, k] x[r_cols[t][:, k]] (op) b[k]``, one per entry of ``b``."""
            start = sum(len(r) for r in rhs)
            for cols_t, vals_t in zip(r_cols, r_vals):
                cols_t, vals_t = np.broadcast_arrays(cols_t, vals_t)
                rr = np.broadcast_to(np.arange(start, start + len(b)).reshape((-1,) + (1,) * (cols_t.ndim - 1)),
                                     cols_t.shape)
                rows.append(rr.ravel())
                cols.append(cols_t.ravel())
                vals.append(vals_t.ravel())
            rhs.append(np.asarray(b, dtype=np.float64))

        for i, (lo, hi) in enumerate(pre):
            w, b = layers[i]
            n = len(b)
            lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
            z, a = np.arange(size, size + n), np.arange(size + n, size + 2 * n)
            size += 2 * n
            active, inactive = lo >= 0, hi <= 0
            unstable = ~active & ~inactive
            self.unstable.append(np.flatnonzero(unstable))
            # z - W a_prev = b
            add(eq_r, eq_c, eq_v, eq_b, [z[:, None], np.broadcast_to(prev, (n, len(prev)))],
                [np.ones((n, 1)), -w], b)
            lb += [lo, np.where(active, lo, 0.0)]
            ub += [hi, np.where(inactive, 0.0, np.maximum(hi, 0.0))]
            kinds += [np.zeros(n), np.zeros(n)]
            idx = np.flatnonzero(active)
            if len(idx):  # a = z
                add(eq_r, eq_c, eq_v, eq_b, [a[idx], z[idx]], [np.ones(len(idx)), -np.ones(len(idx))],
                    np.zeros(len(idx)))
            idx = np.flatnonzero(unstable)
            if len(idx):
                l_u, u_u = lo[idx], hi[idx]
                ones = np.ones(len(idx))
                add(ub_r, ub_c, ub_v, ub_b, [z[idx], a[idx]], [ones, -ones], np.zeros(len(idx)))  # a >= z
                if integer:
                    d = np.arange(size, size + len(idx))
                    size += len(idx)
                    lb.append(np.zeros(len(idx)))
                    ub.append(np.ones(len(idx)))
                    kinds.append(np.ones(len(idx)))
                    add(ub_r, ub_c, ub_v, ub_b, [a[idx], d], [ones, -u_u], np.zeros(len(idx)))  # a <= u d
                    add(ub_r, ub_c, ub_v, ub_b, [a[idx], z[idx], d], [ones, -ones, -l_u], -l_u)  # a <= z - l(1-d)
                else:
                    s = u_u / (u_u - l_u)
                    add(ub_r, ub_c, ub_v, ub_b, [a[idx], z[idx]], [ones, -s], -s * l_u)  # a <= s (z - l)
            prev = a
        self.size = size
        self.last = prev  # the columns the target block reads
        self.target = layers[-1]
        self.x_index = np.arange(len(lb[0]))
        self.lb, self.ub = np.concatenate(lb), np.concatenate(ub)
        self.integrality = np.concatenate(kinds)
        self.a_eq, self.b_eq = _matrix(eq_r, eq_c, eq_v, eq_b, size)
        self.a_ub, self.b_ub = _matrix(ub_r, ub_c, ub_v, ub_b, size)

    def objective(self, row: np.ndarray, const: float = 0.0) -> tuple[np.ndarray, float]:
        """The cost vector and constant of ``row . (W_m a_m + b_m)`` (``row`` on the target's outputs).

        Shapes:
            row (n_{m+1},) -> cost (size,), const float.
        """
        w, b = self.target
        cost = np.zeros(self.size)
        cost[self.last] = np.asarray(row, dtype=np.float64) @ w
        return cost, float(np.dot(row, b)) + float(const)

    def value(self, v: np.ndarray, cost: np.ndarray, const: float) -> float:
        """The objective at a solution vector."""
        return float(cost @ v) + const


def _matrix(rows: list, cols: list, vals: list, rhs: list, size: int) -> tuple[sparse.csr_array, np.ndarray]:
    b = np.concatenate(rhs) if rhs else np.zeros(0)
    if not rows:
        return sparse.csr_array((0, size)), b
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = v != 0
    return sparse.csr_array((v[keep], (r[keep], c[keep])), shape=(len(b), size)), b


@dataclass(frozen=True)
class LPResult:
    """One LP solve: ``lower`` is a rigorous lower bound of its optimum (``-inf`` unless the solver reported an
    optimal solution), ``value`` the objective at the solver's primal solution ``point``, ``status`` in
    ``optimal | limit | infeasible | unbounded | numerical``."""

    lower: float
    value: float
    status: str
    seconds: float
    point: np.ndarray | None = None


def solve_lp(program: ReluProgram, cost: np.ndarray, const: float = 0.0, *, time_limit: float | None = None
             ) -> LPResult:
    """Minimise ``cost . v + const`` over the program's relaxation with HiGHS (``scipy.optimize.linprog``).

    The lower bound is recomputed from the reported duals (weak duality, see the module docstring), so that the
    solver's tolerances cannot make it exceed the true optimum by more than float64 rounding.
    """
    options = {} if time_limit is None else {"time_limit": max(float(time_limit), 1e-3)}
    tic = time.perf_counter()
    res = optimize.linprog(cost, A_ub=program.a_ub if program.a_ub.shape[0] else None,
                           b_ub=program.b_ub if program.a_ub.shape[0] else None,
                           A_eq=program.a_eq if program.a_eq.shape[0] else None,
                           b_eq=program.b_eq if program.a_eq.shape[0] else None,
                           bounds=np.stack([program.lb, program.ub], axis=1), method="highs", options=options)
    seconds = time.perf_counter() - tic
    status = _SCIPY_STATUS.get(res.status, "numerical")
    if status != "optimal":
        return LPResult(-math.inf, math.nan, status, seconds)
    return LPResult(dual_bound(program, cost, res) + const, float(res.fun) + const, status, seconds,
                    point=np.asarray(res.x))


def dual_bound(program: ReluProgram, cost: np.ndarray, res: optimize.OptimizeResult) -> float:
    """The weak-duality lower bound of ``min cost . v`` at HiGHS's multipliers, with ``y_ub`` clipped to ``<= 0``."""
    bound = 0.0
    reduced = np.asarray(cost, dtype=np.float64).copy()
    if program.a_ub.shape[0]:
        y_ub = np.minimum(np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
        reduced -= program.a_ub.T @ y_ub
        bound += float(program.b_ub @ y_ub)
    if program.a_eq.shape[0]:
        y_eq = np.asarray(res.eqlin.marginals, dtype=np.float64)
        reduced -= program.a_eq.T @ y_eq
        bound += float(program.b_eq @ y_eq)
    bound += float(np.minimum(reduced * program.lb, reduced * program.ub).sum())
    return bound
