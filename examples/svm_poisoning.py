"""SVM poisoning experiments (Biggio, Nelson & Laskov 2012): the 2-D path figure and MNIST digit pairs.

    PYTHONPATH=src TRUSTLAB_DATA=/work/shared/data python examples/svm_poisoning.py mnist --pair 7 1 --points 1
    PYTHONPATH=src python examples/svm_poisoning.py toy --out svm_path.png

``mnist``: a small training set (100 points, as in the paper), a validation set the attacker maximizes the
hinge loss on (500) and a test set (2000), all drawn without overlap from MNIST's training split with a seeded
generator; prints the validation and test error along the first poison point's path (vs attack iterations) and
after each added point (vs number of poison points), plus the label-flip starting point.
``toy``: two Gaussian classes in [0, 1]^2; draws the poison point's path over the validation-error contour.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from trustlab.data import load_dataset
from trustlab.poisoning.svm import (
    SVMPoisonConfig,
    binary_pair,
    fit_svm,
    classification_error,
    loss_surface,
    path_errors,
    plot_attack_path,
    svm_poison,
)


def mnist_experiment(positive: int, negative: int, *, n_points: int, config: SVMPoisonConfig, seed: int,
                     n_train: int = 100, n_val: int = 500, n_test: int = 2000) -> dict:
    """Errors vs attack iterations (first point) and vs number of points for one MNIST digit pair."""
    x, y = load_dataset("mnist", "train", download=False)
    x, y = binary_pair(x.numpy(), y.numpy(), positive, negative)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))[: n_train + n_val + n_test]
    tr, va, te = np.split(idx, [n_train, n_train + n_val])
    sets = {"val": (x[va], y[va]), "test": (x[te], y[te])}
    t0 = time.perf_counter()
    res = svm_poison(x[tr], y[tr], x[va], y[va], n_points=n_points, config=config, rng=rng, attacked_class=1)
    seconds = time.perf_counter() - t0
    first = res.paths[0]
    vs_iter = path_errors(x[tr], y[tr], first.path, first.y, sets, config=config)
    vs_points = path_errors(x[tr], y[tr], res.x, res.y, sets, config=config, cumulative=True)
    return {"pair": [positive, negative], "config": config.to_dict(), "seed": seed, "attack_seconds": seconds,
            "iterations": len(first.path) - 1, "stopped": first.stopped,
            "val_loss": [float(first.losses[0]), float(first.losses[-1])],
            "vs_iterations": {k: v.tolist() for k, v in vs_iter.items()},
            "vs_points": {k: v.tolist() for k, v in vs_points.items()}}


def toy_figure(out: str, *, seed: int = 0) -> None:
    """The 2-D path of one poison point over the validation-error contour, saved to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(seed)

    def draw(k):
        x = np.vstack([rng.normal([0.35, 0.35], 0.12, (k, 2)), rng.normal([0.65, 0.65], 0.12, (k, 2))])
        return x.clip(0, 1), np.r_[-np.ones(k, np.int64), np.ones(k, np.int64)]

    (x, y), (xv, yv) = draw(10), draw(200)
    cfg = SVMPoisonConfig(kernel="rbf", C=10.0, gamma=5.0, step_size=0.1)
    res = svm_poison(x, y, xv, yv, n_points=1, config=cfg, rng=np.random.default_rng(seed + 1))
    surface = loss_surface(x, y, xv, yv, y_c=int(res.y[0]), config=cfg, resolution=40)
    ax = plot_attack_path(surface, res.paths[0], x_tr=x, y_tr=y)
    ax.set_title(f"val error {res.paths[0].errors[0]:.3f} -> {res.paths[0].errors[-1]:.3f}"
                 f" (clean {classification_error(fit_svm(x, y, cfg), xv, yv):.3f})")
    ax.figure.savefig(out, dpi=120, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("mnist")
    m.add_argument("--pair", type=int, nargs=2, default=[7, 1])
    m.add_argument("--points", type=int, default=1)
    m.add_argument("--kernel", default="linear")
    m.add_argument("--C", type=float, default=1.0)
    m.add_argument("--gamma", type=float, default=0.01)
    m.add_argument("--steps", type=int, default=100)
    m.add_argument("--step-size", type=float, default=0.25)
    m.add_argument("--margin-point", choices=["paper", "exact"], default="paper")
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("toy")
    t.add_argument("--out", default="svm_poison_path.png")
    args = parser.parse_args()
    if args.mode == "toy":
        toy_figure(args.out)
        return
    cfg = SVMPoisonConfig(kernel=args.kernel, C=args.C, gamma=args.gamma, steps=args.steps,
                          step_size=args.step_size, margin_point=args.margin_point)
    print(json.dumps(mnist_experiment(*args.pair, n_points=args.points, config=cfg, seed=args.seed)))


if __name__ == "__main__":
    main()
