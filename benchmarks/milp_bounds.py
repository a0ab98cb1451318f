"""The exact MILP with big-M from plain interval bounds against big-M from the tightest bounds, on the same problems.

Tjeng, Xiao & Tedrake (2019, Sec. 4) report that tight intermediate bounds, which both fix more ReLUs as stable and
shrink the big-M constants of the others, are what makes the MILP tractable. Here the same MILPs (every margin of
every example, solved to optimality: ``early_stop=False``, no attack first) run with ``intermediate="interval"``
and with ``intermediate="lp"`` (layer-wise LPs; on a one-hidden-layer network both are exact, so use a network
with two or more hidden layers), interleaved, alternating which goes first, and repeated. The script prints per
variant the median seconds per example (bounds included), the unstable ReLUs and the solver statuses, and the min
and median over the repeats of the time ratio interval / tight. Margins must agree wherever both are optimal.
``--early-stop`` times the sign decision instead, as ``trustlab verify`` makes it (the LP check, then branch and
bound below the cutoff; no attack, so that every example reaches the solver): the verdicts must agree.

    python benchmarks/milp_bounds.py RUN --eps 0.02 --n 10 --repeats 2    # RUN: e.g. configs/mnist_mlp2x100.toml
    python benchmarks/milp_bounds.py --quick                              # a random 2-hidden-layer net, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import MILP, Verdict, certify, to_network
from trustlab.certify.program import intermediate_bounds

VARIANTS = ("interval", "lp")


def load(run: str | None, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The run's final model and its first ``n`` test examples, or (``None``) a seeded random 2-hidden-layer net
    on random inputs labelled by itself."""
    if run is None:
        gen = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        x = torch.rand(n, 20, generator=gen)
        return model, x, model(x).argmax(1)
    from trustlab.checkpoint import latest_checkpoint, load_checkpoint
    from trustlab.evaluation.record_set import evaluation_examples

    model = load_checkpoint(latest_checkpoint(Path(run))).model.eval()
    x, y = evaluation_examples(Path(run), subset=n)
    return model, x, y


def parser_for(doc: str, *, n: int, limit_per: str) -> argparse.ArgumentParser:
    """The arguments the MILP benchmarks share: a run folder, eps, examples, repeats, a time limit and --quick."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a run folder (default: a random net, as --quick)")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--n", type=int, default=n, help=f"test examples (default {n})")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=120.0, help=f"seconds per {limit_per} (default 120)")
    parser.add_argument("--quick", action="store_true", help="a random net, 4 examples, eps 0.1, 2 repeats")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed arguments, with --quick's settings applied."""
    args = parser.parse_args()
    if args.quick:
        args.run, args.n, args.eps, args.repeats = None, 4, 0.1, 2
    return args


def main() -> None:
    parser = parser_for(__doc__, n=10, limit_per="example")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--early-stop", action="store_true", help="decide the sign only, as trustlab verify does")
    args = parse(parser)
    torch.set_num_threads(args.threads)
    model, x, y = load(args.run, args.n)
    threat = LpBall(args.eps)
    net = to_network(model, x[:1])
    methods = {v: MILP(intermediate=v, time_limit=args.time_limit, early_stop=args.early_stop, attack_steps=0)
               for v in VARIANTS}
    for v in VARIANTS:
        pre = intermediate_bounds(net, x, threat, v)
        unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in pre) / len(x)
        print(f"{v:>8}: {unstable:.1f} unstable ReLUs per example")
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    results = {}
    for r in range(args.repeats):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for v in order:
            tic = time.perf_counter()
            results[v] = certify(model, x, y, threat, method=methods[v], batch_size=len(x))
            times[v].append(time.perf_counter() - tic)
            optimal = sum(s == "optimal" for c in results[v] if c.solver for s in c.solver["status"])
            print(f"repeat {r} {v:>8}: {times[v][-1]:.1f} s, {optimal} MILPs optimal", flush=True)
    for v in VARIANTS:
        statuses = Counter(s for c in results[v] if c.solver for s in c.solver["status"])
        verdicts = Counter(c.verdict.value for c in results[v])
        print(f"{v:>8}: median {statistics.median(times[v]) / len(x):.3f} s/example, verdicts {dict(verdicts)}, "
              f"statuses {dict(statuses)}")
    both = [(a, b) for a, b in zip(results["interval"], results["lp"])
            if a.solver and b.solver and set(a.solver["status"]) == set(b.solver["status"]) == {"optimal"}]
    gap = max((abs(p - q) for a, b in both for p, q in zip(a.margin_lower, b.margin_lower)), default=0.0)
    differ = sum(a.verdict is not b.verdict for a, b in zip(results["interval"], results["lp"])
                 if Verdict.UNKNOWN not in (a.verdict, b.verdict))
    print_ratios(times["interval"], times["lp"], "interval / lp-bounds", threads=args.threads, n=len(x), eps=args.eps,
                 tail=f"largest margin difference where both are optimal: {gap:.2e} ({len(both)} examples); "
                      f"decided verdicts that differ: {differ}")


def print_ratios(slow: list[float], fast: list[float], name: str, *, threads: int, n: int, eps: float,
                 tail: str) -> None:
    """The set-up line and the min and median over the repeats of the time ratio ``slow / fast``."""
    ratios = [a / b for a, b in zip(slow, fast)]
    print(f"torch {torch.__version__}, {threads} thread(s), {n} examples, l_inf eps={eps}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"time ratio {name}: min {min(ratios):.2f}, median {statistics.median(ratios):.2f}; {tail}")


if __name__ == "__main__":
    main()
