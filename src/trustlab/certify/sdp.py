"""The SDP relaxation of a one-hidden-layer ReLU network (Raghunathan, Steinhardt & Liang 2018): cvxpy's conic
solvers, or a first-order dual whose bound is sound at any iterate (SDP-FO, Dathathri et al. 2020).

Algorithm: for ``f(x) = W_2 z + b_2`` with ``z = relu(W_1 x + b_1)`` and a row ``c`` on the logits, the
quadratic constraints of the ReLU, ``z >= 0``, ``z >= W_1 x + b_1``, ``z (z - W_1 x - b_1) = 0``, and of the
input box, ``(x - l)(u - x) >= 0``, become linear in the moment matrix ``P = [1, x, z][1, x, z]^T``; dropping
``rank P = 1`` leaves the semidefinite program (the paper's eq. 7 with the bounds of its Sec. 4)::

    min  c . (W_2 z + b_2)
    s.t. P = [[1, x^T, z^T], [x, X, Y], [z, Y^T, Z]] >= 0 (PSD),
         z >= 0,  z >= W_1 x + b_1,  diag(Z) = diag(W_1 Y) + b_1 * z          (ReLU)
         diag(X) <= (l + u) * x - l * u                                       (input box)
         diag(Z) <= (l_z + u_z) * z - l_z * u_z                               (activation bounds)
         tr(X) - 2 x_0 . x + x_0 . x_0 <= eps^2                               (l_2 ball only)

``[l, u]`` is the threat set's box (the l_inf ball within the input domain, or the outer box of the l_2 ball),
``[l_z, u_z] = [max(l_1, 0), max(u_1, 0)]`` from CROWN's bounds ``[l_1, u_1]`` of ``W_1 x + b_1`` (exact for one
layer), widened by :func:`~trustlab.certify.program.widen` for float32. The activation bounds are the paper's:
without them ``z`` is not bounded above by the relaxation. Three reductions shrink the program and do not change
its optimum, so the bound is the paper's SDP on the same bounds:

- inputs whose box has zero width (``l = u``, e.g. ``eps = 0``) are constants folded into ``b_1``;
- with ``fix_stable`` (the default) a stable ReLU is fixed, ``z_i = 0`` if ``u_1 <= 0`` and ``z_i = W_1 x + b_1``
  if ``l_1 >= 0``, and only the unstable ones enter ``P``; a network without unstable ReLUs (l_inf) is bounded in
  closed form over the box, exactly;
- the variables are rescaled, ``x = (l + u)/2 + (u - l)/2 * t`` and ``z_i = u_z,i s_i``, so that every entry of
  ``P`` lies in ``[-1, 1]``: a congruence ``P -> D P D^T`` that maps the SDP onto itself and conditions it for the
  first-order solver.

Solvers (``solver``): the conic solvers SCS and Clarabel through cvxpy, which solve the SDP to their tolerances;
``first-order``, the sound dual of :mod:`trustlab.certify.sdp_fo`; and ``auto`` (the default): SCS when ``P``'s
order is at most :data:`AUTO_MAX_ORDER`, the first-order dual above it. On MNIST (``P`` of order 1 + 784 +
unstable ReLUs) SCS did not converge in 260 s per margin and Clarabel's dense factorisation would need about
800 GB, while the first-order dual gives a sound bound of every margin of an image together in seconds of CPU; on
small programs the conic solvers reach the optimum, which the first-order dual only approaches.

The first-order dual (Dathathri et al., NeurIPS 2020, arXiv:2010.11645): write the SDP as ``min <C, P>`` s.t.
``<A_i, P> <= 0`` (multipliers ``lambda_i >= 0``), ``<F_j, P> = 0`` (the ReLU equalities, ``nu_j`` free),
``<E, P> = P_00 = 1`` (``mu`` free) and ``P >= 0``, each constant multiplied by ``P_00``. Every feasible ``P`` has
``tr(P) <= T = 1 + d + sum_i hi_i^2 <= n``: in the scaled variables ``P_00 = 1``, the input box gives
``T_kk <= 1``, and the activation bounds with the 2 x 2 minors of ``P >= 0`` give ``s_i in [lo_i, hi_i]`` and
``S_ii <= hi_i^2 <= 1``. Hence for ANY ``lambda >= 0``, ``nu``, ``mu`` and ``M = C + sum lambda_i A_i +
sum nu_j F_j - mu E``, every feasible ``P`` has ``<C, P> >= <M, P> + mu >= mu + T min(0, lambda_min(M))``: a lower
bound on the SDP's optimum, hence on the margin, at every iterate, so a stopped optimisation (a time limit, few
steps) still gives a valid, looser bound. The multipliers start at the dual point of the last layer's interval
bound and follow projected Adam on this bound, with ``lambda_min`` estimated by Lanczos; the final value uses a
PROVEN ``lambda_min``: a float64 eigenvalue estimate confirmed by a Cholesky factorisation of ``M - sigma I``
with Demmel's backward-error bound (Higham 2002, Sec. 10.1; Rump 2006), less the rounding of ``M``'s entries.
Its status is ``dual``, not ``optimal``: the bound is proven but not the SDP's optimum; it certifies only when it
exceeds ``margin_tol`` plus :attr:`~trustlab.certify.solver.SolverMethod.tolerance`, like every solver bound. A
failed eigenvalue certificate gives ``-inf`` and the status ``numerical``.

Conic solver tolerance (reliability-tests CERT-09): only cvxpy's status OPTIMAL gives a bound; OPTIMAL_INACCURATE
(``inaccurate``), a time or iteration limit (``limit``), INFEASIBLE, UNBOUNDED, solver errors (``numerical``) and
a program too large for Clarabel's dense factorisation (``memory``, see :data:`CLARABEL_MAX_BYTES`) give ``-inf``
and never certify. From an optimal solve the reported lower bound is ::

    lower = const + v - gap - (eps_abs + eps_rel * (1 + |v|))

with ``v`` the objective the solver minimised (``c . (W_2 z + b_2)`` less its constant ``const``), ``gap`` the
duality gap ``|pobj - dobj|`` the solver reports (SCS; cvxpy does not expose Clarabel's, whose stopping rule bounds
it by the tolerances instead), and ``eps_abs``, ``eps_rel`` the solver's stopping tolerances, set from the
configuration (SCS ``eps_abs``/``eps_rel``; Clarabel ``tol_gap_abs``/``tol_gap_rel`` and ``tol_feas = eps_abs``).
This is a margin for the solver's stopping rule, not a rigorous dual certificate like the LP's or the first-order
dual's: residuals of SCS that exceed its tolerances are not detected.

The SDP contains every point of the network's graph over the threat set, so it is at most as tight as the exact
MILP; it is incomparable to the LP in general (the paper reports it tighter on its networks, Sec. 6).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from trustlab.certify.network import Network, prepare
from trustlab.certify.program import dense_layers, intermediate_bounds, widen
from trustlab.certify.result import Bounds, Certificate
from trustlab.certify.sdp_fo import DUAL, sdp_fo
from trustlab.certify.solver import OPTIMAL, RowResult, SolverMethod
from trustlab.errors import MissingDependencyError
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["sdp_bounds", "SDP", "SOLVERS", "FIRST_ORDER", "AUTO_MAX_ORDER", "CLARABEL_MAX_BYTES", "SDPRelaxation"]

FIRST_ORDER = "first-order"  # the sound first-order dual solver of :mod:`trustlab.certify.sdp_fo`
SOLVERS = ("auto", FIRST_ORDER, "SCS", "CLARABEL")  # the last two: cvxpy's open-source conic solvers
# auto: SCS up to this order of P, the first-order dual above it. SCS took 356-536 s per image (9 margins) on a
# 64-50-10 digits net (order 65 + unstable ReLUs) and did not converge in 260 s per margin at order ~800 (MNIST),
# where the first-order dual gives a sound bound of all 9 margins in seconds (docs/results.md)
AUTO_MAX_ORDER = 50
FIRST_ORDER_ROWS = 64  # (example, margin) pairs the first-order solver iterates together
# Clarabel (interior point) factors a dense Hessian block of the PSD cone, (n (n + 1) / 2)^2 float64 for an n x n
# matrix: 800 GB for MNIST's n = 794, which aborts the process; larger programs get the status "memory" instead
CLARABEL_MAX_BYTES = 4 * 2**30
_STATUS = {
    "optimal": OPTIMAL, "optimal_inaccurate": "inaccurate", "user_limit": "limit",
    "infeasible": "infeasible", "infeasible_inaccurate": "infeasible",
    "unbounded": "unbounded", "unbounded_inaccurate": "unbounded",
    "infeasible_or_unbounded": "infeasible", "solver_error": "numerical",
}  # fmt: skip


def sdp_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None,
               solver: str = "auto", eps_abs: float = 1e-6, eps_rel: float = 1e-6, time_limit: float | None = None,
               fix_stable: bool = True, steps: int = 1000, step_size: float = 0.2) -> Bounds:
    """SDP-relaxation bounds on ``C f(x')`` over the threat set, for a network with one hidden layer.

    Args:
        network: a :class:`~trustlab.certify.Network` of depth 1, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf or l_2 ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.
        solver: ``"SCS"`` or ``"CLARABEL"`` (cvxpy), ``"first-order"`` (the sound dual, :mod:`.sdp_fo`), or
            ``"auto"``: SCS when ``P``'s order is at most :data:`AUTO_MAX_ORDER`, else first-order.
        eps_abs, eps_rel: the conic solver's stopping tolerances, also subtracted from its value (module docstring).
        time_limit: seconds per SDP solve (cvxpy's compilation, once per example, is not counted), or None (SCS
            then stops after 100,000 iterations); a conic solve that stops early gives the trivial bound
            (``-inf``/``inf``; SCS reports a time limit as inaccurate). First-order: seconds of iterations per
            example (its rows are solved together); the bound when they stop is still sound.
        fix_stable: fix the stable ReLUs instead of relaxing them (same optimum, smaller program).
        steps: iterations of the first-order solver (0: its initial interval-bound dual point).
        step_size: the first-order solver's Adam step, relative to each multiplier's natural size.

    Returns:
        :class:`~trustlab.certify.Bounds` ``(N, S)`` in ``x``'s dtype; not differentiable.

    Raises:
        ValueError: the network's depth is not 1, or an invalid argument.
        MissingDependencyError: a conic solver is needed and cvxpy is not installed (``pip install 'trustlab[sdp]'``).
        UnsupportedLayerError: the model has layers that are not affine or ReLU (listed).

    Shapes:
        x (N, *D), spec (N, S, K) -> (N, S).

    Reference:
        Raghunathan, Steinhardt & Liang, "Semidefinite relaxations for certifying robustness to adversarial
        examples", NeurIPS 2018, arXiv:1811.01057, eq. (7) and Sec. 4 (the bound constraints); Dathathri et al.,
        NeurIPS 2020, arXiv:2010.11645 (the first-order dual, SDP-FO).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to float32 rounding of the network;
        for the conic solvers also up to solver error beyond the tolerances they report (the first-order bound
        is a certified dual bound, module docstring).
    """
    config = SDP(solver=solver, eps_abs=eps_abs, eps_rel=eps_rel, time_limit=time_limit, fix_stable=fix_stable,
                 steps=steps, step_size=step_size)
    network = prepare(network, x, threat, spec)[0]
    check_depth(network)  # before any solve
    return config.bounds(network, x, threat, spec=spec)


@dataclass(frozen=True)
class SDP(SolverMethod):
    """Configuration of the SDP relaxation: the ``solver`` (``auto``, ``first-order``, ``SCS`` or ``CLARABEL``),
    the conic solvers' tolerances ``eps_abs`` and ``eps_rel``, a ``time_limit`` in seconds per SDP (None for
    none), ``fix_stable``, and the first-order solver's ``steps`` and ``step_size``."""

    name: ClassVar[str] = "sdp"
    function = staticmethod(sdp_bounds)
    decisive: ClassVar[frozenset[str]] = frozenset({OPTIMAL, DUAL})  # a certified dual bound is proven

    solver: str = "auto"
    eps_abs: float = 1e-6
    eps_rel: float = 1e-6
    time_limit: float | None = None
    fix_stable: bool = True
    steps: int = 1000
    step_size: float = 0.2

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        check_nonneg_float(self.eps_abs, "eps_abs", positive=True)
        check_nonneg_float(self.eps_rel, "eps_rel", positive=True)
        if self.time_limit is not None:
            check_nonneg_float(self.time_limit, "time_limit", positive=True)
        if not isinstance(self.fix_stable, bool):
            raise TypeError(f"fix_stable must be a bool, got {self.fix_stable!r}")
        check_positive_int(self.steps, "steps", minimum=0)
        check_nonneg_float(self.step_size, "step_size", positive=True)

    def certificates(self, model: nn.Module | Network, network: Network, x: Tensor, y: Tensor, threat: LpBall, *,
                     logits: Tensor, margin_tol: float, start: int, settings: dict[str, Any]) -> list[Certificate]:
        check_depth(network)  # before any example, also a misclassified one that needs no solve
        return super().certificates(model, network, x, y, threat, logits=logits, margin_tol=margin_tol,
                                    start=start, settings=settings)

    def solver_for(self, order: int) -> str:
        """The solver a program whose ``P`` has this order gets."""
        if self.solver == "auto":
            return "SCS" if order <= AUTO_MAX_ORDER else FIRST_ORDER
        return self.solver

    def solve_example(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                      plain: nn.Module | Network | None = None, label: int | None = None,
                      margin_tol: float = 0.0) -> list[RowResult]:
        return self.solve_batch(network, x, threat, rows[None])[0][0]

    def solve_batch(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                    plain: nn.Module | Network | None = None, labels: list[int] | None = None,
                    margin_tol: float = 0.0) -> list[tuple[list[RowResult], float]]:
        """Each example's relaxation, solved in closed form, by a conic solver one row at a time, or with the
        other first-order examples, their rows iterated together."""
        check_depth(network)
        if not isinstance(threat, LpBall):
            raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
        results: list[list[RowResult]] = [[] for _ in range(len(x))]
        seconds = [0.0] * len(x)
        first: list[tuple[int, SDPRelaxation]] = []
        for n in range(len(x)):
            tic = time.perf_counter()
            relaxation = SDPRelaxation.build(network, x[n : n + 1], threat, fix_stable=self.fix_stable)
            solver = self.solver_for(relaxation.order)
            if relaxation.closed_form:  # linear in t over [-1, 1]^d: the minimum is exact
                results[n] = [RowResult(const - float(np.abs(cost_t).sum()), OPTIMAL, 0.0)
                              for _, cost_t, const in map(relaxation.objective, _numpy_rows(rows[n]))]
            elif solver == FIRST_ORDER:
                first.append((n, relaxation))
            else:
                results[n] = self._solve_conic(relaxation, rows[n], solver, time.perf_counter() - tic)
            seconds[n] += time.perf_counter() - tic
        per_chunk = max(1, FIRST_ORDER_ROWS // max(1, rows.shape[1]))
        first_block = network.blocks[0]  # pad to the network's sizes: bounds independent of the batch (CERT-10)
        pad = (math.prod(first_block.in_shape), math.prod(first_block.out_shape))
        for i in range(0, len(first), per_chunk):
            chunk = first[i : i + per_chunk]
            tic = time.perf_counter()
            costs = [tuple(np.stack(c) for c in zip(*map(rel.objective, _numpy_rows(rows[n])))) for n, rel in chunk]
            limit = None if self.time_limit is None else self.time_limit * len(chunk)
            res = sdp_fo([rel for _, rel in chunk], costs, steps=self.steps, step_size=self.step_size,
                         time_limit=limit, device=x.device, pad=pad)
            share = (time.perf_counter() - tic) / len(chunk)
            for (n, _), lower in zip(chunk, res.lower):
                results[n] = [RowResult(float(v), DUAL if math.isfinite(v) else "numerical", share / len(lower))
                              for v in lower]
                seconds[n] += share
        return list(zip(results, seconds))

    def _solve_conic(self, relaxation: SDPRelaxation, rows: Tensor, solver: str, setup: float) -> list[RowResult]:
        """One cvxpy solve per row with the conic ``solver``, the program compiled once."""
        cp = _cvxpy()
        if solver == "CLARABEL" and 8 * (relaxation.order * (relaxation.order + 1) // 2) ** 2 > CLARABEL_MAX_BYTES:
            return [RowResult(-math.inf, "memory", 0.0) for _ in range(len(rows))]
        tic = time.perf_counter()
        program = _Program(cp, relaxation)
        setup += time.perf_counter() - tic
        config = self if solver == self.solver else replace(self, solver=solver)
        out = []
        for row in _numpy_rows(rows):
            cost_s, cost_t, const = relaxation.objective(row)
            res = program.solve(cost_s, cost_t, config)
            out.append(RowResult(res.lower + const, res.status, res.seconds + setup / len(rows)))
        return out

    def solver_options(self) -> dict[str, Any]:
        """The keyword options of ``cvxpy.Problem.solve`` for this solver and these tolerances."""
        if self.solver == "SCS":
            return {"eps_abs": self.eps_abs, "eps_rel": self.eps_rel, "max_iters": 100_000,
                    "time_limit_secs": 0.0 if self.time_limit is None else float(self.time_limit)}
        options = {"tol_gap_abs": self.eps_abs, "tol_gap_rel": self.eps_rel, "tol_feas": self.eps_abs}
        if self.time_limit is not None:
            options["time_limit"] = float(self.time_limit)
        return options


def _numpy_rows(rows: Tensor) -> np.ndarray:
    """Specification rows ``(S, K)`` as float64 (exact from float32)."""
    return rows.detach().double().cpu().numpy()


def check_depth(network: Network) -> None:
    """The relaxation is written for ``f = W_2 relu(W_1 x + b_1) + b_2``."""
    if network.depth != 1:
        raise ValueError(f"sdp supports one hidden layer, got depth {network.depth}")


@dataclass(frozen=True)
class SDPRelaxation:
    """The network around one example in the scaled variables ``t`` (free inputs, ``x = mid + r * t`` with
    ``t`` in ``[-1, 1]^d``) and ``s`` (relaxed ReLUs, ``z = scale * s``).

    The relaxed ReLUs satisfy ``s >= 0``, ``s >= w t + b``, ``s (s - w t - b) = 0`` and ``s`` in ``[s_lo, s_hi]``;
    the logits are ``out_s s + out_t t + out_c``; ``ball`` is ``(q, g, h)`` for the l_2 constraint
    ``q . diag(T) + g . t + h <= 0``, or None.

    Shapes:
        w (m, d), b s_lo s_hi (m,), out_s (K, m), out_t (K, d), out_c (K,).
    """

    w: np.ndarray
    b: np.ndarray
    s_lo: np.ndarray
    s_hi: np.ndarray
    out_s: np.ndarray
    out_t: np.ndarray
    out_c: np.ndarray
    ball: tuple[np.ndarray, np.ndarray, float] | None

    @property
    def order(self) -> int:
        """The order ``1 + d + m`` of the moment matrix ``P``."""
        return 1 + self.w.shape[0] + self.w.shape[1]

    @property
    def closed_form(self) -> bool:
        """No relaxed ReLU and no l_2 constraint: the minimum of a linear function over the box."""
        return self.w.shape[0] == 0 and self.ball is None

    @classmethod
    def build(cls, network: Network, x: Tensor, threat: LpBall, *, fix_stable: bool) -> SDPRelaxation:
        """The relaxation around the single example ``x`` (``(1, *D)``), float64."""
        (w1, b1), (w2, b2) = dense_layers(network)
        ((lo, hi),) = intermediate_bounds(network, x.detach(), threat, "crown")
        lo, hi = widen(lo[0].flatten().double().cpu().numpy(), hi[0].flatten().double().cpu().numpy())
        x_lo, x_hi = (t.flatten().double().cpu().numpy() for t in threat.box(x.detach()))
        free = x_hi > x_lo  # zero-width inputs are constants
        mid, r = (x_lo + x_hi) / 2, np.where(free, (x_hi - x_lo) / 2, 0.0)
        w, b = (w1 * r)[:, free], b1 + w1 @ mid  # pre-activations w t + b
        active, inactive = lo >= 0, hi <= 0
        relaxed = ~(active | inactive) if fix_stable else np.ones(len(lo), dtype=bool)
        fixed = active & ~relaxed  # z = w t + b, folded into the logits
        out_t = w2[:, fixed] @ w[fixed]
        out_c = b2 + w2[:, fixed] @ b[fixed]
        scale = np.where(hi[relaxed] > 0, hi[relaxed], 1.0)
        ball = None
        if threat.p != math.inf and free.any():
            delta = mid - x.detach().flatten().double().cpu().numpy()  # ||x' - x||^2 = ||delta + r t||^2
            ball = (r[free] ** 2, 2 * (delta * r)[free], float(delta @ delta) - threat.eps**2)
        return cls(w=w[relaxed] / scale[:, None], b=b[relaxed] / scale,
                   s_lo=np.maximum(lo[relaxed], 0.0) / scale, s_hi=np.maximum(hi[relaxed], 0.0) / scale,
                   out_s=w2[:, relaxed] * scale, out_t=out_t, out_c=out_c, ball=ball)

    def objective(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``row . f = cost_s . s + cost_t . t + const``."""
        return row @ self.out_s, row @ self.out_t, float(row @ self.out_c)


@dataclass(frozen=True)
class _Solved:
    lower: float  # the proven bound of the solver's objective (without the constant), -inf if none
    status: str
    seconds: float


class _Program:
    """The cvxpy problem of one relaxation, compiled once, with the row's costs as parameters."""

    def __init__(self, cp: Any, rel: SDPRelaxation) -> None:
        m, d = rel.w.shape
        self.cp = cp
        self.P = cp.Variable((1 + d + m, 1 + d + m), PSD=True)
        diag = cp.diag(self.P)
        t, s = self.P[0, 1 : 1 + d], self.P[0, 1 + d :]
        cons = [self.P[0, 0] == 1]
        if d:
            cons.append(diag[1 : 1 + d] <= 1)  # (t + 1)(1 - t) >= 0
        if m:
            s_diag = diag[1 + d :]
            pre = rel.w @ t + rel.b if d else rel.b
            # diag(w Y) with Y = P_ts: sum_k w_ik t_k s_i
            cross = cp.sum(cp.multiply(rel.w, self.P[1 + d :, 1 : 1 + d]), axis=1) if d else 0
            cons += [s >= 0, s >= pre, s_diag == cross + cp.multiply(rel.b, s),
                     s_diag <= cp.multiply(rel.s_lo + rel.s_hi, s) - rel.s_lo * rel.s_hi]
        if rel.ball is not None:
            q, g, h = rel.ball
            cons.append(q @ diag[1 : 1 + d] + g @ t + h <= 0)
        self.cost_s = cp.Parameter(m) if m else None
        self.cost_t = cp.Parameter(d) if d else None
        terms = [c @ v for c, v in ((self.cost_s, s), (self.cost_t, t)) if c is not None]
        self.problem = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms)) if terms else cp.Constant(0.0)), cons)

    def solve(self, cost_s: np.ndarray, cost_t: np.ndarray, config: SDP) -> _Solved:
        """Solve for one row; the bound subtracts the gap and the tolerances (module docstring)."""
        cp = self.cp
        if self.cost_s is not None:
            self.cost_s.value = cost_s
        if self.cost_t is not None:
            self.cost_t.value = cost_t
        tic = time.perf_counter()
        try:
            with warnings.catch_warnings():  # cvxpy warns of an inaccurate solution; the status records it
                warnings.simplefilter("ignore", UserWarning)
                self.problem.solve(solver=config.solver, warm_start=True, **config.solver_options())
        except cp.error.SolverError:
            return _Solved(-math.inf, "numerical", time.perf_counter() - tic)
        seconds = time.perf_counter() - tic
        status = _STATUS.get(str(self.problem.status), "numerical")
        value = self.problem.value
        if status != OPTIMAL or value is None or not math.isfinite(value):
            return _Solved(-math.inf, status if status != OPTIMAL else "numerical", seconds)
        slack = reported_gap(self.problem) + config.eps_abs + config.eps_rel * (1.0 + abs(value))
        return _Solved(float(value) - slack, status, seconds)


def reported_gap(problem: Any) -> float:
    """``|pobj - dobj|`` as the solver reports it (SCS's ``info``), or 0 where cvxpy exposes none (Clarabel)."""
    stats = getattr(problem, "solver_stats", None)
    extra = getattr(stats, "extra_stats", None)
    info = extra.get("info") if isinstance(extra, dict) else None
    if not isinstance(info, dict):
        return 0.0
    if "pobj" in info and "dobj" in info:
        gap = abs(float(info["pobj"]) - float(info["dobj"]))
    else:
        gap = abs(float(info.get("gap", 0.0)))
    return gap if math.isfinite(gap) else math.inf


def _cvxpy() -> Any:
    try:
        import cvxpy
    except ImportError as exc:
        raise MissingDependencyError("the SDP relaxation needs cvxpy: pip install 'trustlab[sdp]'") from exc
    return cvxpy
