"""Differential check of trustlab's IBP, CROWN-IBP and CROWN margin bounds against auto_LiRPA (a reference).

For cnn-small and a 784-100-100-10 MLP, with random (seeded default initialisation) and briefly trained weights,
on MNIST test images at eps = 0.1 (l_inf, the box [0, 1]) and eps = 1.0 (l_2, no box), both libraries bound the
margins ``f_y - f_j`` with the same specification matrix C; the script prints the largest absolute difference of
the lower bounds per method, and the largest difference relative to the bound's magnitude.

Measured (20 images, 300 training steps): l_inf agrees to float32 rounding for all three methods (largest
difference 4.6e-5 on bounds near -84, relative 1.5e-6 at most). For l_2 on cnn-small trustlab's bounds are tighter
by up to 4%: auto_LiRPA 0.3 bounds the first convolution with each channel's kernel norm, which over-estimates the
dual norm of the rows cut by the zero padding at the border, where trustlab uses the exact row norms; with that
first-layer bound substituted, trustlab's CROWN agrees with auto_LiRPA to 2.9e-6. On the MLP, l_2 agrees too.

auto_LiRPA is not a dependency of trustlab. The newest release on PyPI (0.3, 2021) pins torch < 1.13 and
numpy < 2; run this in a separate environment with two one-line patches for torch 2.x:

    python -m venv /tmp/lirpa-venv && /tmp/lirpa-venv/bin/pip install torch==2.13.0 "numpy<2" tqdm \\
        packaging appdirs pyyaml && /tmp/lirpa-venv/bin/pip install --no-deps auto_LiRPA==0.3
    # auto_LiRPA/parse_graph.py: import _optimize_graph from torch.onnx._internal.torchscript_exporter.utils,
    # set torch.onnx._internal.torchscript_exporter._globals.GLOBALS.export_onnx_opset_version instead of
    # calling _set_opset_version, and read node attributes with getattr(n, n.kindOf(k))(k) instead of n[k].
    PYTHONPATH=src TRUSTLAB_DATA=... /tmp/lirpa-venv/bin/python benchmarks/compare_auto_lirpa.py --n 20
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from trustlab import LpBall
from trustlab.certify import crown_bounds, crown_ibp_bounds, ibp_bounds, margin_spec
from trustlab.data import load_dataset
from trustlab.models import build_model

OURS = {"IBP": ibp_bounds, "CROWN-IBP": crown_ibp_bounds, "CROWN": crown_bounds}


def mlp_100(seed: int) -> nn.Module:
    """Flatten, 784-100-100-10 with ReLUs, default initialisation from a seeded generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                             nn.Linear(100, 10))


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int) -> nn.Module:
    """``steps`` Adam steps of batch 64 on MNIST training images (a normally trained, non-robust model)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def reference_bounds(model: nn.Module, x: torch.Tensor, c: torch.Tensor, threat: LpBall) -> dict[str, torch.Tensor]:
    """auto_LiRPA's lower bounds of C f for the three methods."""
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bounded = BoundedModule(model, torch.zeros_like(x[:1]))
    if threat.p == math.inf:
        lo, hi = threat.box(x)
        ptb = PerturbationLpNorm(norm=math.inf, eps=threat.eps, x_L=lo, x_U=hi)
    else:
        ptb = PerturbationLpNorm(norm=2.0, eps=threat.eps)
    bx = BoundedTensor(x, ptb)
    out = {}
    for name in OURS:
        lb, _ = bounded.compute_bounds(x=(bx,), method=name, C=c)
        out[name] = lb.detach()
    return out


def compare(label: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: LpBall) -> None:
    c = margin_spec(y, 10)
    ref = reference_bounds(model, x, c, threat)
    with torch.no_grad():
        for name, bound in OURS.items():
            ours = bound(model, x, threat, spec=c).lower
            diff = (ours - ref[name]).abs()
            rel = diff / (1.0 + ref[name].abs())
            print(f"{label:<28} {name:<10} max|diff| {float(diff.max()):.3e}   max rel {float(rel.max()):.3e}   "
                  f"mean bound ours {float(ours.mean()):10.4f} ref {float(ref[name].mean()):10.4f}   "
                  f"ours tighter on {float((ours > ref[name] + 1e-5).float().mean()):.0%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="MNIST test images (default 20)")
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps for the trained models")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x_tr, y_tr = load_dataset("mnist", "train", download=False)
    x, y = load_dataset("mnist", "test", download=False)
    x, y = x[: args.n], y[: args.n]
    models = {
        "cnn-small": lambda: build_model("cnn-small", in_shape=(1, 28, 28), num_classes=10, seed=0),
        "mlp 784-100-100-10": lambda: mlp_100(0),
    }
    print(f"torch {torch.__version__}; {args.n} MNIST test images; lower bounds of the margins f_y - f_j")
    for name, make in models.items():
        for weights in ("random", "trained"):
            model = make().eval() if weights == "random" else train_briefly(make(), x_tr, y_tr,
                                                                            steps=args.train_steps, seed=0)
            for threat in (LpBall(0.1), LpBall(1.0, 2.0, lower=None, upper=None)):
                norm = "linf 0.1" if threat.p == math.inf else "l2 1.0"
                compare(f"{name} {weights} {norm}", model, x, y, threat)


if __name__ == "__main__":
    main()
