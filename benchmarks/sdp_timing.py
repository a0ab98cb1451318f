"""Seconds per (example, margin row) of the SDP relaxation on MNIST one-hidden-layer MLPs, SCS against Clarabel.

Each MLP (784-h-10) is trained here for one epoch of plain SGD on the MNIST training set (seeded), then the SDP
bounds ``--rows`` margins of ``--examples`` test images at one l_inf eps; the script prints, per solver, the
median and max seconds per row, the statuses, the bounds beside CROWN's and the LP's, and the number of unstable
ReLUs (the size of the PSD matrix is 1 + free inputs + unstable ReLUs).

    python benchmarks/sdp_timing.py                       # h = 50 and 100, eps 0.02, 2 images x 2 rows
    python benchmarks/sdp_timing.py --hidden 50 --eps 0.01 --time-limit 120
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import SDP, crown_bounds, lp_bounds, margin_spec, to_network
from trustlab.certify.sdp import SDPRelaxation
from trustlab.data import load_dataset


def train_mlp(hidden: int, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """One epoch of SGD (batch 128, lr 0.1) on 784-hidden-10."""
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # nn.Linear's init; the global state is restored below
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x), 128):
        idx = order[i : i + 128]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--examples", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2, help="margin rows per example (of 9)")
    parser.add_argument("--solvers", nargs="+", default=["SCS", "CLARABEL"])
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--eps-solver", type=float, default=1e-6, help="eps_abs = eps_rel")
    args = parser.parse_args()
    x_tr, y_tr = load_dataset("mnist", "train")
    x_te, y_te = load_dataset("mnist", "test")
    threat = LpBall(args.eps)
    print(f"torch threads {torch.get_num_threads()}, eps {args.eps}, tolerances {args.eps_solver}")
    for hidden in args.hidden:
        model = train_mlp(hidden, x_tr, y_tr)
        with torch.no_grad():
            acc = (model(x_te[:1000]).argmax(1) == y_te[:1000]).float().mean().item()
        net = to_network(model, x_te[:1])
        print(f"\n784-{hidden}-10, clean accuracy {acc:.3f} (first 1000 test images)")
        for n in range(args.examples):
            x, y = x_te[n : n + 1], y_te[n : n + 1]
            spec = margin_spec(y, 10)[:, : args.rows]
            rel = SDPRelaxation.build(net, x, threat, fix_stable=True)
            m, d = rel.w.shape
            crown = crown_bounds(net, x, threat, spec=spec).lower[0].tolist()
            lp = lp_bounds(net, x, threat, spec=spec).lower[0].tolist()
            print(f"  image {n}: free inputs {d}, unstable ReLUs {m} (P is {1 + d + m} x {1 + d + m})")
            print(f"    crown {[round(v, 4) for v in crown]}  lp {[round(v, 4) for v in lp]}")
            for solver in args.solvers:
                config = SDP(solver=solver, eps_abs=args.eps_solver, eps_rel=args.eps_solver,
                             time_limit=args.time_limit)
                tic = time.perf_counter()
                res = config.solve_example(net, x, threat, spec[0])
                total = time.perf_counter() - tic
                secs = [r.seconds for r in res]
                print(f"    {solver:8s} median {statistics.median(secs):7.2f} s/row, max {max(secs):7.2f}, "
                      f"total {total:7.2f} s; status {[r.status for r in res]}; "
                      f"lower {[round(r.lower, 4) for r in res]}", flush=True)


if __name__ == "__main__":
    main()
