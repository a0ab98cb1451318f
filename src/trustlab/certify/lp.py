"""The LP relaxation: every unstable ReLU replaced by its convex hull (the triangle), solved with HiGHS.

Algorithm (Wong & Kolter 2018, Sec. 2; Salman et al. 2019 on its place among relaxations): with intermediate
bounds ``l_i <= z_i <= u_i`` (from CROWN by default, from interval arithmetic, or from layer-wise LPs), each
unstable ReLU ``a = relu(z)`` is relaxed to ``a >= 0, a >= z, a <= u (z - l) / (u - l)``, stable ones are fixed,
and ``min_{x'} c . f(x')`` over the l_inf ball intersected with the input box becomes a linear program
(:class:`~trustlab.certify.program.ReluProgram`), one per example and specification row, solved with
``scipy.optimize.linprog`` (HiGHS). The bound reported is the rigorous weak-duality bound at the solver's duals,
so solver tolerances cannot make it unsound.

With the same intermediate bounds the LP is at least as tight as CROWN (whose linear bounds are one feasible dual
point of it, Salman et al. 2019, Theorem 4.2) and at most as tight as the exact MILP (CERT-03); it is exact on a
network without unstable ReLUs and inclusion-monotone in eps when its intermediate bounds are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from trustlab.certify.network import Network
from trustlab.certify.program import INTERMEDIATE, ReluProgram, check_linf, dense_layers, intermediate_bounds, \
    solve_lp, widen
from trustlab.certify.result import Bounds
from trustlab.certify.solver import RowResult, SolverMethod
from trustlab.threat import LpBall
from trustlab.validation import check_nonneg_float

__all__ = ["lp_bounds", "LP"]


def lp_bounds(network: Network | nn.Module, x: Tensor, threat: LpBall, *, spec: Tensor | None = None,
              intermediate: str = "crown", time_limit: float | None = None) -> Bounds:
    """LP-relaxation bounds on ``C f(x')`` over the l_inf threat set around each example.

    Args:
        network: a :class:`~trustlab.certify.Network`, or a model that converts to one.
        x: centres ``(N, *D)``.
        threat: the l_inf ball and the input box (an l_2 ball raises ``ValueError``).
        spec: ``C`` of shape ``(N, S, K)``; ``None`` bounds the logits.
        intermediate: ``"crown"``, ``"interval"`` or ``"lp"``, where the ReLU bounds come from.
        time_limit: seconds per LP, or None; an LP that stops early gives the trivial bound (``-inf``/``inf``).

    Returns:
        :class:`~trustlab.certify.Bounds` ``(N, S)`` in ``x``'s dtype; not differentiable.

    Raises:
        UnsupportedLayerError: the model has layers the LP cannot express (listed).
        TypeError, ValueError: invalid arguments, or an l_2 threat.

    Reference:
        Wong & Kolter, "Provable Defenses against Adversarial Examples via the Convex Outer Adversarial Polytope",
        ICML 2018, arXiv:1711.00851, eq. (2) and Sec. 2 (the triangle relaxation).

    Guarantee:
        ``lower <= C f(x') <= upper`` for every ``x'`` in the threat set, up to float32 rounding of the network.
    """
    check_linf(threat, "the LP relaxation")
    return LP(intermediate=intermediate, time_limit=time_limit).bounds(network, x, threat, spec=spec)


@dataclass(frozen=True)
class LP(SolverMethod):
    """Configuration of the LP relaxation: ``intermediate`` bounds (``crown``, ``interval``, ``lp``) and a
    ``time_limit`` in seconds per LP (None for none)."""

    name: ClassVar[str] = "lp"
    function = staticmethod(lp_bounds)  # the functional form; ``bounds`` solves through ``solve_example``

    intermediate: str = "crown"
    time_limit: float | None = None

    def __post_init__(self) -> None:
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {INTERMEDIATE}, got {self.intermediate!r}")
        if self.time_limit is not None:
            check_nonneg_float(self.time_limit, "time_limit", positive=True)

    def solve_example(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                      plain: nn.Module | Network | None = None, label: int | None = None,
                      margin_tol: float = 0.0) -> list[RowResult]:
        check_linf(threat, "the LP relaxation")
        program = build_program(network, x, threat, self.intermediate)
        out = []
        for row in rows.detach().double().cpu().numpy():
            cost, const = program.objective(row)
            res = solve_lp(program, cost, const, time_limit=self.time_limit)
            out.append(RowResult(res.lower, res.status, res.seconds))
        return out


def build_program(network: Network, x: Tensor, threat: LpBall, intermediate: str, *,
                  integer: bool = False) -> ReluProgram:
    """The program of the whole network around the single example ``x`` (``(1, *D)``)."""
    return ReluProgram(*program_inputs(network, x, threat, intermediate), integer=integer)


def program_inputs(network: Network, x: Tensor, threat: LpBall, intermediate: str) -> tuple:
    """What a :class:`ReluProgram` around the single example ``x`` is built from: the dense layers, the input box
    and the widened intermediate bounds (computed once, so that an LP and a MILP can share them)."""
    layers = dense_layers(network)
    pre = intermediate_bounds(network, x.detach(), threat, intermediate, layers=layers)
    x_lo, x_hi = (t.flatten().double().cpu().numpy() for t in threat.box(x.detach()))
    prior = [widen(lo[0].flatten().double().cpu().numpy(), hi[0].flatten().double().cpu().numpy()) for lo, hi in pre]
    return layers, x_lo, x_hi, prior
