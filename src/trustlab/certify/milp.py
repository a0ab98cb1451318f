"""The exact worst-case margin as a mixed-integer linear program (Tjeng, Xiao & Tedrake 2019), solved with HiGHS.

Algorithm: the network around an example becomes :class:`~trustlab.certify.program.ReluProgram` with a binary
``d`` per unstable ReLU (``a <= u d``, ``a <= z - l (1 - d)``, ``a >= z``, ``a >= 0``) whose big-M constants are
the intermediate bounds (``lp``: layer-wise LPs, the tightest here; ``crown``; or ``interval``); stable ReLUs
are fixed and add no binary. For every other class ``j`` the MILP ``min f_y(x') - f_j(x')`` over the l_inf ball
intersected with the input box is solved with ``scipy.optimize.milp`` (HiGHS branch and bound), under one time
limit per example shared by its classes.

Verdicts (reliability-tests CERT-04, CERT-09):

- a class whose optimum is not above the margin tolerance yields the solver's point; its input, clipped to the
  threat set in float32, is re-evaluated by the plain PyTorch model, and only if that model misclassifies it is
  the example FALSIFIED with it as the counterexample (a near tie that float32 does not reproduce is UNKNOWN);
- CERTIFIED needs every class solved to optimality with the proven (dual) bound above the tolerance;
- a time limit or any other solver status gives UNKNOWN with the best proven dual bound, never CERTIFIED.

``early_stop`` (the default) decides the sign and no more: first a short PGD attack (``attack_steps`` steps,
seeded) looks for a counterexample, and one it finds (re-checked in float32 inside the threat set) makes the
example FALSIFIED with no solve (status ``attack`` for the class it reaches, ``skipped`` for the others); then a
class whose LP relaxation (on the same bounds) already proves the margin above the level a certificate needs
(``margin_tol`` plus the tolerance) is not branched on (status ``bound``); the others are branched on with that
level (plus twice the tolerance) as HiGHS's objective cutoff, which prunes every node that cannot hold a point
below it: a search that ends with no such point proves the margin at least the cutoff, less the tolerance (status
``cutoff``, the recorded bound), without computing the exact margin, while a point below the cutoff is optimised
as usual. The cutoff is used only when a verdict is wanted, as in ``certify``; :meth:`MILP.bounds` searches
without one. The classes after a falsified one are not solved (``skipped``). The exact margin of every class is
computed with ``early_stop=False``. The statuses are recorded per class.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import optimize
from torch import Tensor, nn

from trustlab.attacks.pgd import pgd
from trustlab.certify.lp import program_inputs
from trustlab.certify.network import Network
from trustlab.certify.program import INTERMEDIATE, ReluProgram, check_linf, solve_lp
from trustlab.certify.result import Bounds
from trustlab.certify.solver import OPTIMAL, RowResult, SolverMethod
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["milp_bounds", "MILP", "solve_milp", "DEFAULT_TIME_LIMIT", "HIGHS_OPTIONS"]

DEFAULT_TIME_LIMIT = 60.0  # seconds per example
_MIP_REL_GAP = 1e-9  # HiGHS stops at this relative gap: the optimum is exact to the solver's tolerances
# HiGHS's sub-MIP primal heuristics (RINS, RENS) look for good feasible points by solving smaller MILPs. On these
# programs they took most of the time (9 of 13 s of one margin of a 784-100-100-10 net) while the tree finds the
# same optimum without them: 2.3-3.0x less time in total over the margins of two images of a standard and a
# PGD-trained such net (benchmarks/milp_heuristics.py gives 2.34/2.36 on the latter; docs/results.md, issue 15).
# A HiGHS that lacks these options ignores them. They change the search only, never a bound or a status's meaning.
HIGHS_OPTIONS = MappingProxyType({"mip_rel_gap": _MIP_REL_GAP, "mip_heuristic_run_rins": False,
                                  "mip_heuristic_run_rens": False})
_STATUS = {0: OPTIMAL, 1: "limit", 2: "infeasible", 3: "unbounded", 4: "numerical"}
CUTOFF = "cutoff"  # under early_stop: no point has a margin below the cutoff (see the module docstring)
_CUTOFF_TOL = 1e-6  # HiGHS's feasibility tolerance, taken off a cutoff before it counts as a proven bound


def solve_milp(program: ReluProgram, cost: np.ndarray, const: float, *, time_limit: float,
               cutoff: float | None = None, highs_options: Mapping[str, Any] = HIGHS_OPTIONS) -> RowResult:
    """``min cost . v + const`` over the program (``integer=True``) with HiGHS, under ``highs_options``.

    ``cutoff``: search only for points with an objective below this level (HiGHS's ``objective_bound``); a search
    that ends with none proves the minimum at least ``cutoff`` (status ``cutoff``, ``lower = cutoff - 1e-6``, the
    solver's tolerance). The program must be feasible (the caller checks its relaxation), so that this
    "infeasible" can only come from the cutoff.

    Returns:
        ``lower``: HiGHS's proven dual bound (``-inf`` if none); ``upper``: the objective at the best feasible
        point (``nan`` if none); ``point``: that point's input variables (float64), else None.
    """
    if not program.integrality.any():  # every ReLU stable: the MILP is its own LP, with a rigorous dual bound
        lp = solve_lp(program, cost, const, time_limit=time_limit)
        return RowResult(lp.lower, lp.status, lp.seconds, upper=lp.value,
                         point=None if lp.point is None else lp.point[program.x_index])
    tic = time.perf_counter()
    constraints = []
    if program.a_ub.shape[0]:
        constraints.append(optimize.LinearConstraint(program.a_ub, -np.inf, program.b_ub))
    if program.a_eq.shape[0]:
        constraints.append(optimize.LinearConstraint(program.a_eq, program.b_eq, program.b_eq))
    options = {"time_limit": max(float(time_limit), 1e-3), **highs_options}
    if cutoff is not None:
        options["objective_bound"] = float(cutoff) - const
    with warnings.catch_warnings():  # SciPy warns that it passes options it does not list through to HiGHS
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        res = optimize.milp(cost, integrality=program.integrality, bounds=optimize.Bounds(program.lb, program.ub),
                            constraints=constraints, options=options)
    seconds = time.perf_counter() - tic
    status = _STATUS.get(res.status, "numerical")
    if cutoff is not None and status == "infeasible":  # no point below the cutoff: the minimum is at least it
        return RowResult(float(cutoff) - _CUTOFF_TOL, CUTOFF, seconds)
    dual = getattr(res, "mip_dual_bound", None)
    proven = status in (OPTIMAL, "limit") and dual is not None and math.isfinite(dual)
    lower = float(dual) + const if proven else -math.inf  # only a finished or stopped search proves its bound
    if res.x is None:
        return RowResult(lower, status, seconds)
    upper = float(res.fun) + const
    if status == OPTIMAL:
        lower = min(lower, upper)  # a dual bound above the optimum is tolerance noise, never a better proof
    return RowResult(lower, status, seconds, upper=upper, point=np.asarray(res.x)[program.x_index])


def milp_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None,
                intermediate: str = "lp", time_limit: float = DEFAULT_TIME_LIMIT) -> Bounds:
    """Exact bounds on ``C f(x')`` over the l_inf threat set (proven dual bounds where a time limit stops HiGHS).

    Every row is solved (``early_stop=False``, no attack: bounds, not a verdict).

    Args:
        network: a :class:`~trustlab.certify.Network`, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf ball and the input box.
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.
        intermediate: ``"lp"``, ``"crown"`` or ``"interval"``: the big-M bounds.
        time_limit: seconds per example, shared by its ``2 S`` MILPs (lower and upper bounds).

    Returns:
        :class:`~trustlab.certify.Bounds` ``(N, S)``; equal to the true extremes when every MILP is optimal.

    Reference:
        Tjeng, Xiao & Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer Programming",
        ICLR 2019, arXiv:1711.07356, eq. (6) and Sec. 4 (progressive bound tightening).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to the solver's tolerances.
    """
    check_linf(threat, "the MILP")
    config = MILP(intermediate=intermediate, time_limit=time_limit, early_stop=False, attack_steps=0)
    return config.bounds(network, x, threat, spec=spec)


@dataclass(frozen=True)
class MILP(SolverMethod):
    """Configuration of the exact MILP: big-M from ``intermediate`` bounds (``lp``, ``crown``, ``interval``), a
    ``time_limit`` in seconds per example (from the intermediate bounds to the last class's solve; the attack
    before them is not counted), ``early_stop`` (decide the sign only; see the module docstring) and the
    ``attack_steps`` of the PGD run first under ``early_stop`` (0: none)."""

    name: ClassVar[str] = "milp"
    function = staticmethod(milp_bounds)  # the functional form; ``bounds`` solves through ``solve_example``
    decisive: ClassVar[frozenset[str]] = frozenset({OPTIMAL, "bound", CUTOFF})

    intermediate: str = "lp"
    time_limit: float = DEFAULT_TIME_LIMIT
    early_stop: bool = True
    attack_steps: int = 20

    def __post_init__(self) -> None:
        check_positive_int(self.attack_steps, "attack_steps", minimum=0)
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {INTERMEDIATE}, got {self.intermediate!r}")
        check_nonneg_float(self.time_limit, "time_limit", positive=True)
        if not isinstance(self.early_stop, bool):
            raise TypeError(f"early_stop must be a bool, got {self.early_stop!r}")

    def solve_example(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                      plain: nn.Module | Network | None = None, label: int | None = None,
                      margin_tol: float = 0.0) -> list[RowResult]:
        check_linf(threat, "the MILP")
        if self.early_stop and self.attack_steps and plain is not None and label is not None:
            found = _attack_first(plain, x, label, threat, rows, steps=self.attack_steps)
            if found is not None:
                return found
        deadline = time.perf_counter() + self.time_limit
        tic = time.perf_counter()
        inputs = program_inputs(network, x, threat, self.intermediate)  # the intermediate bounds, once
        program = ReluProgram(*inputs, integer=True)
        relaxed = ReluProgram(*inputs) if self.early_stop else None
        setup = time.perf_counter() - tic
        x_lo, x_hi = threat.box(x.detach())
        out: list[RowResult] = []
        falsified = False
        needed = margin_tol + self.tolerance  # a certificate needs every bound above this
        for row in rows.detach().double().cpu().numpy():
            cost, const = program.objective(row)
            if falsified:
                out.append(RowResult(-math.inf, "skipped", 0.0))
                continue
            cutoff = None
            if relaxed is not None:
                lp = solve_lp(relaxed, *relaxed.objective(row))
                if lp.status == OPTIMAL and lp.lower > needed:
                    out.append(RowResult(lp.lower, "bound", lp.seconds))
                    continue
                if lp.status == OPTIMAL and label is not None:  # a verdict is wanted and the program is feasible:
                    cutoff = needed + 2 * self.tolerance  # an empty search below the cutoff is a proof
            left = deadline - time.perf_counter()
            if left <= 0:
                out.append(RowResult(-math.inf, "limit", 0.0))
                continue
            res = solve_milp(program, cost, const, time_limit=left, cutoff=cutoff)
            point = None
            if res.point is not None and plain is not None and label is not None and res.upper <= self.tolerance:
                point = _misclassified(plain, res.point, x_lo, x_hi, label)
            out.append(RowResult(res.lower, res.status, res.seconds + setup / len(rows), upper=res.upper,
                                 point=point))
            falsified = point is not None and self.early_stop
        return out


def _attack_first(plain: nn.Module | Network, x: Tensor, label: int, threat: LpBall, rows: Tensor, *,
                  steps: int) -> list[RowResult] | None:
    """A PGD counterexample, as row results (``attack`` for the first row whose margin it makes non-positive,
    ``skipped`` for the rest), or None when PGD finds none. Seeded, so that certification is reproducible."""
    tic = time.perf_counter()
    x = x.detach()
    y = torch.tensor([label], device=x.device)
    with torch.enable_grad():
        x_adv = pgd(plain, x, y, threat, steps=steps, generator=torch.Generator(device=x.device).manual_seed(0))
    x_lo, x_hi = threat.box(x)
    point = _misclassified(plain, x_adv.flatten().double().cpu().numpy(), x_lo, x_hi, label)
    if point is None:
        return None
    with torch.no_grad():
        margins = rows.to(x.dtype) @ plain(point.view_as(x))[0]
    hit = int(torch.nonzero(margins <= 0)[0, 0]) if bool((margins <= 0).any()) else 0
    seconds = time.perf_counter() - tic
    return [RowResult(-math.inf, "attack", seconds, upper=float(margins[k]), point=point) if k == hit
            else RowResult(-math.inf, "skipped", 0.0) for k in range(len(rows))]


def _misclassified(plain: nn.Module | Network, point: np.ndarray, x_lo: Tensor, x_hi: Tensor,
                   label: int) -> Tensor | None:
    """The solver's input point in float32, clipped into the threat set, if the plain model misclassifies it."""
    cand = torch.as_tensor(point, dtype=x_lo.dtype, device=x_lo.device).view_as(x_lo)
    cand = torch.minimum(torch.maximum(cand, x_lo), x_hi)
    with torch.no_grad():
        logits = plain(cand)
    if int(logits.argmax(1)) != label:
        return cand.flatten()
    return None
