"""``trustlab optim``: optimizer trajectories on the lecture's 2-D objectives."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "optim"
HELP = "optimizer trajectories on the lecture's 2-D objectives"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/optim")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from trustlab.optim.lecture import run_lecture_demos
    from trustlab.optim.report import write_optim_outputs

    out = Path(args.out)
    rows = run_lecture_demos(out, seed=args.seed)
    print(write_optim_outputs(rows, out))
    print(f"\nFigures and optim.md / optim.json are in {out}/")
    return 0
