"""Randomized-smoothing throughput against its floor: plain batched forward passes over the same number of rows.

CERTIFY on ``N`` inputs classifies ``N * (n0 + n)`` noisy copies. Its floor is that many rows pushed through the
same model in forward batches of the same size under ``no_grad``, with no noise and no counting. The script times
``SmoothedClassifier.certify`` against the floor, interleaved after a warm-up (alternating which goes first), and
prints noisy samples classified per second for both and the min and median of the ratio certify/floor. What the
ratio measures is the overhead of noise generation (seeded per block of rows, see ``trustlab.smoothing.core``),
adding the inputs, argmax and counting. Two more timings, interleaved with the same repeats, say where it goes:
``floor+copy`` also copies each batch's rows into the batch buffer first (the one pass over the rows that any
caller classifying ``N * (n0 + n)`` distinct inputs makes), and ``noise`` only draws the noise rows CERTIFY draws
(``Noise.sample_`` per block of ``NOISE_BLOCK`` rows), without the model. Conventions (malloc tuning, wall and CPU
time) follow ``attack_throughput.py``, whose helpers are reused.

    python benchmarks/smoothing_throughput.py --quick
    python benchmarks/smoothing_throughput.py --inputs 100 --n0 100 --n 10000 --batch 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import torch
from torch import nn

from attack_throughput import MNIST_SHAPE, MODELS, build, timed, tune_malloc
from trustlab.smoothing import NOISE_BLOCK, SmoothedClassifier


def floor(model: nn.Module, rows: int, batch: torch.Tensor, source: torch.Tensor | None = None) -> None:
    """``rows`` rows through ``model`` in forward batches of ``len(batch)`` (the last one partial); with
    ``source`` (same shape as ``batch``), each batch is first copied from it into ``batch``."""
    with torch.no_grad():
        for start in range(0, rows, len(batch)):
            b = batch[: min(len(batch), rows - start)]
            if source is not None:
                b.copy_(source[: len(b)])
            model(b)


def noise_only(smoothed: SmoothedClassifier, rows: int, block: torch.Tensor, seed: int) -> None:
    """Draw the ``rows`` noise rows of CERTIFY (one seeded generator per ``NOISE_BLOCK`` rows), nothing else."""
    for b in range(-(-rows // NOISE_BLOCK)):
        smoothed.noise.sample_(block, generator=torch.Generator().manual_seed(seed + b))


def bench(name: str, *, inputs: int, n0: int, n: int, batch: int, repeats: int, sigma: float) -> dict[str, Any]:
    """Interleaved timings of CERTIFY and the floor on one model; returns throughput and ratio statistics."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # parameter init of the fallback model only
    model, source = build(name)
    model.eval()
    x = torch.rand(inputs, *MNIST_SHAPE, generator=g)
    rows = inputs * (n0 + n)
    fixed = torch.rand(batch, *MNIST_SHAPE, generator=g)
    copy_from = torch.rand(batch, *MNIST_SHAPE, generator=g)
    block = torch.empty(NOISE_BLOCK, *MNIST_SHAPE)
    smoothed = SmoothedClassifier(model, 10, sigma)

    variants = {
        "certify": lambda: smoothed.certify(x, n0, n, 0.001, generator=torch.Generator().manual_seed(1),
                                            batch_size=batch),
        "floor": lambda: floor(model, rows, fixed),
        "floor+copy": lambda: floor(model, rows, fixed, copy_from),
        "noise": lambda: noise_only(smoothed, rows, block, 2),
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    order = list(variants.items())
    for r in range(repeats):
        for label, fn in order if r % 2 == 0 else order[::-1]:
            times[label].append(timed(fn))
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    ratios = [a / b for a, b in zip(wall["certify"], wall["floor"])]
    ratios_copy = [a / b for a, b in zip(wall["certify"], wall["floor+copy"])]
    return {"rows": rows, "certify_per_s": rows / statistics.median(wall["certify"]),
            "floor_per_s": rows / statistics.median(wall["floor"]), "ratio_min": min(ratios),
            "ratio_median": statistics.median(ratios),
            "cpu_ratio_median": statistics.median(a[1] / b[1] for a, b in zip(times["certify"], times["floor"])),
            "copy_ratio_min": min(ratios_copy), "copy_ratio_median": statistics.median(ratios_copy),
            "noise_share": statistics.median(a / b for a, b in zip(wall["noise"], wall["floor"])),
            "source": source}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20, help="inputs certified together (default 20)")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per input (default 100)")
    parser.add_argument("--n", type=int, default=2000, help="estimation samples per input (default 2000)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per forward pass (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (default 5)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise std (default 0.25)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="cnn-small, 10 inputs, n0=20, n=500, 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.n0, args.n, args.repeats, args.models = 10, 20, 500, 3, ["cnn-small"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tuned = tune_malloc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {args.inputs} inputs x "
          f"(n0={args.n0} + n={args.n}) rows, batch {args.batch}, {args.repeats} repeats, malloc tuned: {tuned}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':<10} {'rows':>8} {'certify/s':>11} {'floor/s':>11} {'ratio min':>10} {'ratio median':>13} "
          f"{'cpu-time median':>16} {'vs floor+copy min/median':>25} {'noise/floor':>12}")
    for name in args.models:
        s = bench(name, inputs=args.inputs, n0=args.n0, n=args.n, batch=args.batch, repeats=args.repeats,
                  sigma=args.sigma)
        copy = f"{s['copy_ratio_min']:.3f} / {s['copy_ratio_median']:.3f}"
        print(f"{name:<10} {s['rows']:>8} {s['certify_per_s']:>11.0f} {s['floor_per_s']:>11.0f} "
              f"{s['ratio_min']:>10.3f} {s['ratio_median']:>13.3f} {s['cpu_ratio_median']:>16.3f} {copy:>25} "
              f"{s['noise_share']:>12.3f}  [{s['source']}]")


if __name__ == "__main__":
    main()
