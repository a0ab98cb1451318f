"""The exact MILP with HiGHS's default options against trustlab's (sub-MIP heuristics RINS and RENS off).

The same programs (every margin of every example, big-M from the layer-wise LP bounds, solved to optimality) go to
:func:`~trustlab.certify.milp.solve_milp` (HiGHS) once with ``mip_rel_gap`` alone and once with ``HIGHS_OPTIONS``,
interleaved per margin, alternating which goes first, and repeated. The script prints per variant the median
seconds per example and the min and median over the repeats of the time ratio default / trustlab. The optima must
agree (the largest difference is printed); only the search differs.

    python benchmarks/milp_heuristics.py RUN --eps 0.02 --n 2 --repeats 2   # RUN: e.g. configs/mnist_mlp2x100_pgd.toml
    python benchmarks/milp_heuristics.py --quick                            # a random 2-hidden-layer net, seconds
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
from milp_bounds import load, parse, parser_for, print_ratios

from trustlab import LpBall
from trustlab.certify import margin_spec, to_network
from trustlab.certify.lp import build_program
from trustlab.certify.milp import HIGHS_OPTIONS, solve_milp

VARIANTS = {"default": {"mip_rel_gap": HIGHS_OPTIONS["mip_rel_gap"]}, "trustlab": HIGHS_OPTIONS}


def main() -> None:
    args = parse(parser_for(__doc__, n=2, limit_per="MILP"))
    torch.set_num_threads(1)
    model, x, y = load(args.run, args.n)
    net = to_network(model, x[:1])
    spec = margin_spec(y, net.num_classes, dtype=torch.float64).numpy()
    problems = []
    for i in range(len(x)):
        program = build_program(net, x[i:i + 1], LpBall(args.eps), "lp", integer=True)
        problems += [(program, program.objective(row)[0]) for row in spec[i]]
    print(f"{len(problems)} MILPs, {statistics.mean(int(p.integrality.sum()) for p, _ in problems):.1f} binaries "
          "on average", flush=True)
    times = {v: [0.0] * args.repeats for v in VARIANTS}
    optima: dict[str, list[float]] = {v: [] for v in VARIANTS}
    statuses = {v: set() for v in VARIANTS}
    for r in range(args.repeats):
        for k, (program, cost) in enumerate(problems):
            order = list(VARIANTS) if (r + k) % 2 == 0 else list(VARIANTS)[::-1]
            for v in order:
                res = solve_milp(program, cost, 0.0, time_limit=args.time_limit, highs_options=VARIANTS[v])
                times[v][r] += res.seconds
                statuses[v].add(res.status)
                if r == 0:
                    optima[v].append(res.upper if res.status == "optimal" else float("nan"))
        print(f"repeat {r}: " + ", ".join(f"{v} {times[v][r]:.1f} s" for v in VARIANTS), flush=True)
    for v in VARIANTS:
        print(f"{v:>8}: median {statistics.median(times[v]) / len(x):.2f} s/example, statuses {statuses[v]}")
    gap = np.nanmax(np.abs(np.subtract(optima["default"], optima["trustlab"])))
    print_ratios(times["default"], times["trustlab"], "default / trustlab options", threads=1, n=len(x),
                 eps=args.eps, tail=f"largest optimum difference: {gap:.2e}")


if __name__ == "__main__":
    main()
