"""``trustlab matrix``: the training type x evaluation type robustness matrix, with diagnosis and report."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "matrix"
HELP = "train x evaluation robustness matrix with diagnosis and report"


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _names(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.data import DATASETS
    from trustlab.device import DEVICES
    from trustlab.evaluation.matrix import EVAL_TYPES
    from trustlab.models import model_names
    from trustlab.training import DEFENSES

    p.add_argument("--config", help="TOML recipe with [train] and [matrix] tables (flags override it)")
    p.add_argument("--out", help="folder for the runs and the report (default runs/matrix-<dataset>-eps<eps>)")
    p.add_argument("--dataset", choices=sorted(DATASETS))
    p.add_argument("--model", choices=model_names())
    p.add_argument("--eps", type=float, help="training and evaluation budget")
    p.add_argument("--p", choices=["inf", "2"])
    p.add_argument("--train", type=_names, help=f"comma-separated defenses, from {list(DEFENSES)}")
    p.add_argument("--eval", dest="evals", type=_names, help=f"comma-separated evaluations, from {list(EVAL_TYPES)}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--subset", type=int, help="quick run: N training (and at most N val/test) examples")
    p.add_argument("--seed", type=int)
    p.add_argument("--root", help="data root")
    p.add_argument("--device", choices=list(DEVICES))
    p.add_argument("--pgd-steps", type=int, help="evaluation PGD steps (default 40); not the training's")
    p.add_argument("--pgd-step-size", type=float, help="evaluation PGD step (default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=int, help="evaluation PGD restarts")
    p.add_argument("--eps-grid", type=_floats, help="comma-separated eps values for the accuracy-vs-eps curves")
    p.add_argument("--curve-subset", type=int, help="test examples for curves and the convergence check")
    p.add_argument("--eval-subset", type=int, help="test examples for the matrix (default all)")
    p.add_argument("--convergence-check", action=argparse.BooleanOptionalAction, default=None,
                   help="also run PGD with twice the steps (default on)")


def run(args: argparse.Namespace) -> int:
    from trustlab.cli.config import load_toml
    from trustlab.evaluation.matrix import matrix_configs, run_matrix

    recipe = load_toml(args.config) if args.config else {}
    base, mc = matrix_configs(recipe, vars(args))
    out = Path(args.out or f"runs/matrix-{base.dataset}-eps{mc.eps:g}")
    print(run_matrix(base, mc, out, progress=not args.quiet).text())
    return 0
