"""Time of IBP and CROWN margin bounds on cnn-small against the floor of the same model's plain forward pass.

IBP should cost about two forward passes (a centre and a radius through every layer). CROWN sends back
``2 n_i`` rows per example for every hidden layer and ``2 S`` for the S = 9 margins
(:func:`trustlab.certify.crown_rows`); each row is a vector-Jacobian product through the layers below it, so its
cost is counted in those backward passes, printed beside the time. The three variants run on the same images,
interleaved after a warm-up, alternating their order; the script prints the median milliseconds per image and the
min and median of each method's ratio to the forward floor over the repeats, and the load average (other
processes inflate the spread).

    python benchmarks/bounds.py                 # 1,000 MNIST test images, eps 0.1, 3 repeats
    python benchmarks/bounds.py --quick         # 32 images, 2 repeats: a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from trustlab import LpBall
from trustlab.certify import crown_bounds, crown_rows, ibp_bounds, margin_spec, to_network
from trustlab.data import load_dataset
from trustlab.models import build_model

MNIST_SHAPE = (1, 28, 28)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call (synchronising the GPU before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tic


def variants(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int) -> dict[str, Callable]:
    """The forward floor, IBP and CROWN over all images in batches of ``batch`` (no gradients)."""
    threat = LpBall(eps)
    net = to_network(model, x[:1])
    chunks = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    specs = [margin_spec(yb, 10) for _, yb in chunks]

    def forward() -> None:
        for xb, _ in chunks:
            model(xb)

    def ibp() -> None:
        for (xb, _), c in zip(chunks, specs):
            ibp_bounds(net, xb, threat, spec=c)

    def crown() -> None:
        for (xb, _), c in zip(chunks, specs):
            crown_bounds(net, xb, threat, spec=c)

    return {"forward": forward, "ibp": ibp, "crown": crown}


def bench(runs: dict[str, Callable], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Interleaved timings, the order reversed every other repeat, after one warm-up call of each."""
    with torch.no_grad():
        for fn in runs.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        order = list(runs.items())
        for r in range(repeats):
            for label, fn in order if r % 2 == 0 else order[::-1]:
                times[label].append(timed(fn, device))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="MNIST test images (default 1000)")
    parser.add_argument("--eps", type=float, default=0.1, help="l_inf radius (default 0.1)")
    parser.add_argument("--batch", type=int, default=250, help="images per bound call (default 250)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (default 3)")
    parser.add_argument("--quick", action="store_true", help="32 images, batch 32, 2 repeats: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.repeats = 32, 32, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, y = load_dataset("mnist", "test", download=False)
    x, y = x[: args.n].to(device), y[: args.n].to(device)
    model = build_model("cnn-small", in_shape=MNIST_SHAPE, num_classes=10, seed=0).to(device).eval()
    rows = crown_rows(to_network(model, x[:1]), 9)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, cnn-small (seed 0), "
          f"{args.n} MNIST test images in batches of {args.batch}, l_inf eps={args.eps}, {args.repeats} repeats, "
          f"load average {os.getloadavg()[0]:.2f} (other processes inflate the spread)")
    times = bench(variants(model, x, y, args.eps, args.batch), args.repeats, device)
    floor = times["forward"]
    print(f"{'method':<8} {'ms/image':>10} {'ratio min':>10} {'ratio median':>13}  cost model")
    for label, ts in times.items():
        ratios = [t / f for t, f in zip(ts, floor)]
        note = {"forward": "1 forward pass (the floor)", "ibp": "~2 forward passes (centre and radius)",
                "crown": f"{rows} backward passes (rows) per image"}[label]
        print(f"{label:<8} {1e3 * statistics.median(ts) / args.n:>10.3f} {min(ratios):>10.1f} "
              f"{statistics.median(ratios):>13.1f}  {note}")
    print(f"crown time per backward pass: {statistics.median(times['crown']) / (args.n * rows) * 1e6:.2f} us "
          f"= {statistics.median(times['crown']) / statistics.median(floor) / rows:.3f} forward passes")


if __name__ == "__main__":
    main()
