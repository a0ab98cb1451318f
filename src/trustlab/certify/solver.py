"""What the optimization-based certifiers (LP, MILP, SDP) share: per-example solves with a status each.

A bound method gives one lower bound per margin; a solver also says whether it finished. :class:`SolverMethod`
is the configuration base of those methods: ``solve_rows`` returns, for one example and each specification row, a
:class:`RowResult` (a proven lower bound, the solver status, the time), and :meth:`SolverMethod.certificates`
turns them into certificates under reliability-tests CERT-09: an example is CERTIFIED only if every row was
solved to optimality and every proven bound exceeds ``margin_tol`` plus the solver's tolerance; any other status
(a time limit, numerical trouble, infeasibility) gives UNKNOWN with the proven bound, never CERTIFIED.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from trustlab.certify.config import BoundMethod
from trustlab.certify.network import Network, prepare
from trustlab.certify.result import Bounds, Certificate, Verdict
from trustlab.certify.spec import margin_spec, other_classes
from trustlab.threat import LpBall

__all__ = ["RowResult", "SolverMethod", "OPTIMAL"]

OPTIMAL = "optimal"


@dataclass(frozen=True)
class RowResult:
    """One specification row of one example.

    Args:
        lower: a proven lower bound of the row over the threat set (``-inf`` if nothing was proven).
        status: ``optimal``, ``limit`` (time or node limit), ``infeasible``, ``unbounded``, ``numerical``, or a
            method's own decisive status (the MILP's ``bound``: decided by its relaxation before any branching;
            ``cutoff``: branch and bound proved that no point has a margin below the level a certificate needs).
        seconds: wall time of the row's solves.
        upper: the objective at the best feasible point found (MILP), an upper bound of the row's minimum.
        point: that point's input (MILP), flattened; used for counterexamples.
    """

    lower: float
    status: str
    seconds: float
    upper: float = math.nan
    point: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class SolverMethod(BoundMethod):
    """Base of the solver configurations: subclasses implement :meth:`solve_example`.

    ``tolerance`` is added to ``margin_tol`` before a proven bound certifies (the solver's feasibility
    tolerance, CERT-09). ``decisive`` lists the statuses that count as finished.
    """

    tolerance: ClassVar[float] = 1e-6
    decisive: ClassVar[frozenset[str]] = frozenset({OPTIMAL})

    def bounds(self, network: Network | nn.Module, x: Tensor, threat: LpBall, *,
               spec: Tensor | None = None) -> Bounds:
        """Bounds on ``C f(x')``: each example's rows ``[C; -C]`` through :meth:`solve_batch` (with no plain
        model, so no counterexample search), as float64 solves returned in ``x``'s dtype; not differentiable."""
        network, rows = prepare(network, x, threat, spec)
        solved = self.solve_batch(network, x, threat, rows.expand(len(x), *rows.shape[1:]))
        lower = torch.tensor([[r.lower for r in results] for results, _ in solved], dtype=torch.float64)
        return Bounds.from_stacked(lower.view(len(x), rows.shape[1]).to(device=x.device, dtype=x.dtype))

    def solve_batch(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                    plain: nn.Module | Network | None = None, labels: list[int] | None = None,
                    margin_tol: float = 0.0) -> list[tuple[list[RowResult], float]]:
        """Each example's rows (``rows`` ``(N, S, K)``) and its wall time: :meth:`solve_example` one example at a
        time, unless a method solves several together (the SDP's first-order solver)."""
        out = []
        for n in range(len(x)):
            tic = time.perf_counter()
            results = self.solve_example(network, x[n : n + 1], threat, rows[n], plain=plain,
                                         label=None if labels is None else labels[n], margin_tol=margin_tol)
            out.append((results, time.perf_counter() - tic))
        return out

    def solve_example(self, network: Network, x: Tensor, threat: LpBall, rows: Tensor, *,
                      plain: nn.Module | Network | None = None, label: int | None = None,
                      margin_tol: float = 0.0) -> list[RowResult]:
        """Solve each row of ``rows`` (``(S, K)``, on the logits) for the single example ``x`` (``(1, *D)``).

        With ``plain`` and ``label`` (a verdict is wanted, not bounds) a method may stop a row once its bound
        provably exceeds ``margin_tol + tolerance``, the level a certificate needs."""
        raise NotImplementedError

    def certificates(self, model: nn.Module | Network, network: Network, x: Tensor, y: Tensor, threat: LpBall, *,
                     logits: Tensor, margin_tol: float, start: int, settings: dict[str, Any]) -> list[Certificate]:
        """One certificate per example of the batch, from :meth:`solve_batch` on its margin rows.

        A misclassified clean input is FALSIFIED (it lies in the threat set) without a solve; ``logits`` are the
        plain model's on ``x``, already computed by the caller. A row whose solver found a point the plain model
        misclassifies makes the example FALSIFIED with that point.
        """
        k = network.num_classes
        classes = other_classes(y, k).tolist()
        spec = margin_spec(y, k, dtype=x.dtype)
        correct = [i for i in range(len(x)) if int(logits[i].argmax()) == int(y[i])]  # the plain model's logits
        solved = dict(zip(correct, self.solve_batch(network, x[correct], threat, spec[correct], plain=model,
                                                    labels=[int(y[i]) for i in correct], margin_tol=margin_tol))
                      ) if correct else {}
        out = []
        for i in range(len(x)):
            xi = x[i : i + 1]
            if i not in solved:  # misclassified: the clean input is a counterexample, no solve
                out.append(Certificate(index=start + i, label=int(y[i]), verdict=Verdict.FALSIFIED,
                                       classes=tuple(classes[i]), margin_lower=tuple([-math.inf] * (k - 1)),
                                       method=self.name, settings=dict(settings), seconds=0.0,
                                       counterexample=xi[0].clone(),
                                       solver={"status": ["misclassified"] * (k - 1)}))
                continue
            results, seconds = solved[i]
            counterexample = next((r.point for r in results if r.point is not None), None)
            proven = all(r.status in self.decisive for r in results)
            lower = [r.lower for r in results]
            if counterexample is not None:
                verdict = Verdict.FALSIFIED
            elif proven and min(lower) > margin_tol + self.tolerance:
                verdict = Verdict.CERTIFIED
            else:
                verdict = Verdict.UNKNOWN
            solver = {"status": [r.status for r in results], "seconds": [round(r.seconds, 6) for r in results]}
            if any(not math.isnan(r.upper) for r in results):
                solver["upper"] = [None if not math.isfinite(r.upper) else r.upper for r in results]
            out.append(Certificate(index=start + i, label=int(y[i]), verdict=verdict, classes=tuple(classes[i]),
                                   margin_lower=tuple(lower), method=self.name, settings=dict(settings),
                                   seconds=seconds,
                                   counterexample=None if counterexample is None
                                   else counterexample.view(x.shape[1:]).to(x.dtype).clone(),
                                   solver=solver))
        return out
