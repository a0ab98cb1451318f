"""PGD throughput against its floor: k plain forward+backward passes that compute the input gradient.

PGD-k must cost k forward+backward passes plus one forward; everything else (random start, projection,
best-iterate tracking) should be noise. This script times ``trustlab.attacks.pgd`` against that floor on the same
model and batch, interleaving the two after a warm-up, and prints the min and median of the ratio pgd/floor for
each model. The target is a ratio of at most 1.10 on the CPU.

By default the script asks glibc to keep freed memory in the process (``mallopt``): otherwise glibc trims the
heap after every pass and page-faults it back on the next one, which adds 20-30% system time with a large spread
to both variants alike (measured: 25k-40k minor faults per 10 passes of cnn-small). ``--no-tune-malloc`` turns
this off. Other processes on the machine still inflate the spread; the load average is printed.

    python benchmarks/attack_throughput.py --steps 10 --batch 256 --repeats 7
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trustlab import LpBall
from trustlab.attacks import pgd

MNIST_SHAPE = (1, 28, 28)
MODELS = ("cnn-small", "cnn-large")


def build(name: str) -> tuple[nn.Module, str]:
    """The model from ``trustlab.models`` if it is importable, else an identical local definition; and which."""
    try:
        from trustlab.models import build_model
    except ImportError:
        return _local_model(name), "local definition"
    return build_model(name, in_shape=MNIST_SHAPE, num_classes=10, seed=0), "trustlab.models"


def _local_model(name: str) -> nn.Module:
    if name == "cnn-small":
        return nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, 10),
        )  # fmt: skip
    if name == "cnn-large":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Linear(1024, 10),
        )  # fmt: skip
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """``steps`` forward+backward passes computing the input gradient of the summed cross-entropy."""
    for _ in range(steps):
        x_in = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_in), y, reduction="sum")
        torch.autograd.grad(loss, x_in)


def tune_malloc() -> bool:
    """Stop glibc from returning freed heap memory to the OS between passes; False where that is not possible."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 25))


def timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time ignores time spent descheduled)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, *, steps: int, batch: int, repeats: int, eps: float) -> dict[str, Any]:
    """Interleaved timings of PGD-k and the floor on one model; returns the ratio statistics."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # parameter init of the fallback model only
    model, source = build(name)
    model.eval()
    x = torch.rand(batch, *MNIST_SHAPE, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    threat = LpBall(eps)

    def run_pgd() -> None:
        pgd(model, x, y, threat, steps=steps, generator=torch.Generator().manual_seed(1))

    def run_floor() -> None:
        floor(model, x, y, steps)

    run_pgd(), run_floor()  # warm-up (allocator, oneDNN primitive caches)
    times: dict[str, list[tuple[float, float]]] = {"pgd": [], "floor": []}
    order = [("pgd", run_pgd), ("floor", run_floor)]
    for r in range(repeats):  # interleaved, alternating which goes first, so drifts in load hit both alike
        for label, fn in order if r % 2 == 0 else order[::-1]:
            times[label].append(timed(fn))
    wall = {k: [t[0] for t in v] for k, v in times.items()}
    ratios = [a / b for a, b in zip(wall["pgd"], wall["floor"])]
    cpu_ratios = [a[1] / b[1] for a, b in zip(times["pgd"], times["floor"])]
    return {
        "pgd_ms": 1e3 * statistics.median(wall["pgd"]),
        "floor_ms": 1e3 * statistics.median(wall["floor"]),
        "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios),
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "source": source,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="PGD steps k (default 10)")
    parser.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant (default 7)")
    parser.add_argument("--eps", type=float, default=0.3, help="l_inf radius (default 0.3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's heap trimming on")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_malloc else tune_malloc()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
        f"PGD-{args.steps} l_inf eps={args.eps}, batch {args.batch}, {args.repeats} repeats, "
        f"malloc tuned: {tuned}, load average {os.getloadavg()[0]:.2f} (other processes inflate the spread)"
    )
    print(f"{'model':<10} {'pgd ms':>9} {'floor ms':>9} {'ratio min':>10} {'ratio median':>13} {'cpu-time median':>16}")
    for name in args.models:
        s = bench(name, steps=args.steps, batch=args.batch, repeats=args.repeats, eps=args.eps)
        row = f"{s['pgd_ms']:>9.2f} {s['floor_ms']:>9.2f} {s['ratio_min']:>10.3f} {s['ratio_median']:>13.3f}"
        row += f" {s['cpu_ratio_median']:>16.3f}"
        print(f"{name:<10} {row}  [{s['source']}]")


if __name__ == "__main__":
    main()
