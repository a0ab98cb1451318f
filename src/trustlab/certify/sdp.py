"""The SDP relaxation of a one-hidden-layer ReLU network (Raghunathan, Steinhardt & Liang 2018), with cvxpy.

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

Solver tolerance (reliability-tests CERT-09): only cvxpy's status OPTIMAL gives a bound; OPTIMAL_INACCURATE
(``inaccurate``), a time or iteration limit (``limit``), INFEASIBLE, UNBOUNDED, solver errors (``numerical``) and
a program too large for Clarabel's dense factorisation (``memory``, see :data:`CLARABEL_MAX_BYTES`) give ``-inf``
and never certify. From an optimal solve the reported lower bound is ::

    lower = const + v - gap - (eps_abs + eps_rel * (1 + |v|))

with ``v`` the objective the solver minimised (``c . (W_2 z + b_2)`` less its constant ``const``), ``gap`` the
duality gap ``|pobj - dobj|`` the solver reports (SCS; cvxpy does not expose Clarabel's, whose stopping rule bounds
it by the tolerances instead), and ``eps_abs``, ``eps_rel`` the solver's stopping tolerances, set from the
configuration (SCS ``eps_abs``/``eps_rel``; Clarabel ``tol_gap_abs``/``tol_gap_rel`` and ``tol_feas = eps_abs``).
This is a margin for the solver's stopping rule, not a rigorous dual certificate like the LP's: residuals of the
first-order solver that exceed its tolerances are not detected.

The SDP contains every point of the network's graph over the threat set, so it is at most as tight as the exact
MILP; it is incomparable to the LP in general (the paper reports it tighter on its networks, Sec. 6).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from trustlab.certify.network import Network, prepare
from trustlab.certify.program import dense_layers, intermediate_bounds, widen
from trustlab.certify.result import Bounds, Certificate
from trustlab.certify.solver import OPTIMAL, RowResult, SolverMethod
from trustlab.errors import MissingDependencyError
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float

__all__ = ["sdp_bounds", "SDP", "SOLVERS", "CLARABEL_MAX_BYTES", "SDPRelaxation"]

SOLVERS = ("SCS", "CLARABEL")  # cvxpy's names of the open-source conic solvers that take PSD constraints
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
               solver: str = "SCS", eps_abs: float = 1e-6, eps_rel: float = 1e-6, time_limit: float | None = None,
               fix_stable: bool = True) -> Bounds:
    """SDP-relaxation bounds on ``C f(x')`` over the threat set, for a network with one hidden layer.

    Args:
        network: a :class:`~trustlab.certify.Network` of depth 1, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf or l_2 ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.
        solver: ``"SCS"`` or ``"CLARABEL"``.
        eps_abs, eps_rel: the solver's stopping tolerances, also subtracted from its value (module docstring).
        time_limit: seconds per SDP solve (cvxpy's compilation, once per example, is not counted), or None (SCS
            then stops after 100,000 iterations); a solve that stops early gives the trivial bound (``-inf``/``inf``;
            SCS reports a time limit as inaccurate).
        fix_stable: fix the stable ReLUs instead of relaxing them (same optimum, smaller program).

    Returns:
        :class:`~trustlab.certify.Bounds` ``(N, S)`` in ``x``'s dtype; not differentiable.

    Raises:
        ValueError: the network's depth is not 1, or an invalid argument.
        MissingDependencyError: cvxpy is not installed (``pip install 'trustlab[sdp]'``).
        UnsupportedLayerError: the model has layers that are not affine or ReLU (listed).

    Shapes:
        x (N, *D), spec (N, S, K) -> (N, S).

    Reference:
        Raghunathan, Steinhardt & Liang, "Semidefinite relaxations for certifying robustness to adversarial
        examples", NeurIPS 2018, arXiv:1811.01057, eq. (7) and Sec. 4 (the bound constraints).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to float32 rounding of the network and
        solver error beyond the tolerances it reports.
    """
    config = SDP(solver=solver, eps_abs=eps_abs, eps_rel=eps_rel, time_limit=time_limit, fix_stable=fix_stable)
    network = prepare(network, x, threat, spec)[0]
    check_depth(network)  # before any solve
    return config.bounds(network, x, threat, spec=spec)


@dataclass(frozen=True)
class SDP(SolverMethod):
    """Configuration of the SDP relaxation: the conic ``solver`` (``SCS`` or ``CLARABEL``), its tolerances
    ``eps_abs`` and ``eps_rel``, a ``time_limit`` in seconds per SDP (None for none), and ``fix_stable``."""

    name: ClassVar[str] = "sdp"
    function = staticmethod(sdp_bounds)

    solver: str = "SCS"
    eps_abs: float = 1e-6
    eps_rel: float = 1e-6
    time_limit: float | None = None
    fix_stable: bool = True

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        check_nonneg_float(self.eps_abs, "eps_abs", positive=True)
        check_nonneg_float(self.eps_rel, "eps_rel", positive=True)
        if self.time_limit is not None:
            check_nonneg_float(self.time_limit, "time_limit", positive=True)
        if not isinstance(self.fix_stable, bool):
            raise TypeError(f"fix_stable must be a bool, got {self.fix_stable!r}")

    def certificates(self, model: nn.Module | Network, network: Network, x: Tensor, y: Tensor, threat: LpBall, *,
                     logits: Tensor, margin_tol: float, start: int, settings: dict[str, Any]) -> list[Certificate]:
        check_depth(network)  # before any example, also a misclassified one that needs no solve
        return super().certificates(model, network, x, y, threat, logits=logits, margin_tol=margin_tol,
                                    start=start, settings=settings)

    def solve_example(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                      plain: nn.Module | Network | None = None, label: int | None = None) -> list[RowResult]:
        check_depth(network)
        if not isinstance(threat, LpBall):
            raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
        cp = _cvxpy()
        tic = time.perf_counter()
        relaxation = SDPRelaxation.build(network, x, threat, fix_stable=self.fix_stable)
        order = 1 + relaxation.w.shape[0] + relaxation.w.shape[1]
        if self.solver == "CLARABEL" and not relaxation.closed_form and 8 * (order * (order + 1) // 2) ** 2 > \
                CLARABEL_MAX_BYTES:
            return [RowResult(-math.inf, "memory", 0.0) for _ in range(len(rows))]
        program = None if relaxation.closed_form else _Program(cp, relaxation)
        setup = time.perf_counter() - tic
        out = []
        for row in rows.detach().double().cpu().numpy():
            cost_s, cost_t, const = relaxation.objective(row)
            if program is None:  # linear in t over [-1, 1]^d: the minimum is exact
                out.append(RowResult(const - float(np.abs(cost_t).sum()), OPTIMAL, setup / len(rows)))
                continue
            res = program.solve(cost_s, cost_t, self)
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
