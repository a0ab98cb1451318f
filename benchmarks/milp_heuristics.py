"""The exact MILP with HiGHS's default options against trustlab's (sub-MIP heuristics RINS and RENS off).

The same programs (every margin of every example, big-M from the layer-wise LP bounds, solved to optimality) go to
``scipy.optimize.milp`` once with ``mip_rel_gap`` alone and once with :data:`trustlab.certify.milp.HIGHS_OPTIONS`,
interleaved per margin, alternating which goes first, and repeated. The script prints per variant the median
seconds per example and the min and median over the repeats of the time ratio default / trustlab. The optima must
agree (the largest difference is printed); only the search differs.

    python benchmarks/milp_heuristics.py RUN --eps 0.02 --n 2 --repeats 2   # RUN: e.g. configs/mnist_mlp2x100_pgd.toml
    python benchmarks/milp_heuristics.py --quick                            # a random 2-hidden-layer net, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from milp_bounds import load, print_ratios
from scipy import optimize

from trustlab import LpBall
from trustlab.certify import to_network
from trustlab.certify.lp import program_inputs
from trustlab.certify.milp import HIGHS_OPTIONS
from trustlab.certify.program import ReluProgram

VARIANTS = {"default": {"mip_rel_gap": HIGHS_OPTIONS["mip_rel_gap"]}, "trustlab": dict(HIGHS_OPTIONS)}


def solve(program: ReluProgram, cost: np.ndarray, options: dict, time_limit: float) -> tuple[float, float, int]:
    """Seconds, optimum (nan unless optimal) and scipy status of one MILP."""
    constraints = [optimize.LinearConstraint(program.a_ub, -np.inf, program.b_ub),
                   optimize.LinearConstraint(program.a_eq, program.b_eq, program.b_eq)]
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unrecognized options", category=RuntimeWarning)
        res = optimize.milp(cost, integrality=program.integrality, bounds=optimize.Bounds(program.lb, program.ub),
                            constraints=constraints, options={"time_limit": time_limit, **options})
    return time.perf_counter() - tic, float(res.fun) if res.status == 0 else float("nan"), int(res.status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run folder (default: a random net, as --quick)")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--n", type=int, default=2, help="test examples (default 2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per MILP (default 120)")
    parser.add_argument("--quick", action="store_true", help="a random net, 4 examples, eps 0.1, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.run, args.n, args.eps, args.repeats = None, 4, 0.1, 2
    torch.set_num_threads(1)
    model, x, y = load(args.run, args.n)
    net = to_network(model, x[:1])
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    problems = []
    for i in range(len(x)):
        program = ReluProgram(*program_inputs(net, x[i:i + 1], LpBall(args.eps), "lp"), integer=True)
        for j in range(classes):
            if j != int(y[i]):
                row = np.zeros(classes)
                row[int(y[i])], row[j] = 1.0, -1.0
                problems.append((program, program.objective(row)[0]))
    print(f"{len(problems)} MILPs, {statistics.mean(int(p.integrality.sum()) for p, _ in problems):.1f} binaries "
          "on average", flush=True)
    times = {v: [0.0] * args.repeats for v in VARIANTS}
    optima: dict[str, list[float]] = {v: [] for v in VARIANTS}
    statuses = {v: set() for v in VARIANTS}
    for r in range(args.repeats):
        for k, (program, cost) in enumerate(problems):
            order = list(VARIANTS) if (r + k) % 2 == 0 else list(VARIANTS)[::-1]
            for v in order:
                seconds, value, status = solve(program, cost, VARIANTS[v], args.time_limit)
                times[v][r] += seconds
                statuses[v].add(status)
                if r == 0:
                    optima[v].append(value)
        print(f"repeat {r}: " + ", ".join(f"{v} {times[v][r]:.1f} s" for v in VARIANTS), flush=True)
    for v in VARIANTS:
        print(f"{v:>8}: median {statistics.median(times[v]) / len(x):.2f} s/example, scipy statuses {statuses[v]}")
    gap = np.nanmax(np.abs(np.subtract(optima["default"], optima["trustlab"])))
    print_ratios(times["default"], times["trustlab"], "default / trustlab options", threads=1, n=len(x),
                 eps=args.eps, tail=f"largest optimum difference: {gap:.2e}")


if __name__ == "__main__":
    main()
