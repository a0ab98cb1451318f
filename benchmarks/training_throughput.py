"""Training and evaluation throughput of PreAct ResNet-18 on CIFAR-10 against the floor of plain passes.

On whatever device runs it, this times four workloads through trustlab's own code on CIFAR-10-shaped batches
(the real training images if the CIFAR-10 files are under the data root, else uniform random images of that
shape: throughput does not depend on the pixels):

- ``standard``: one training step of ``trustlab.training.train_epoch`` with the ``none`` defense;
- ``fgsm-rs``: the same with FGSM-RS at eps 8/255 (Wong et al. 2020): one attack pass and one training pass;
- ``pgd10``: PGD-10 adversarial training (Madry et al. 2018): ten attack passes and one training pass;
- ``pgd20-eval``: ``attack_batched`` with PGD-20, as ``trustlab attack`` runs it: twenty passes and a forward.

Each is timed against its floor, measured in the same run on the same model and batch: the same number of plain
passes with no trustlab code around them, an *input pass* (eval mode, the input gradient of the summed
cross-entropy, as an attack step needs) per attack step, and a *training pass* (train mode, the parameter
gradients of the mean cross-entropy) per training step. The ratio workload / floor is trustlab's overhead (the
loader, random starts, projections, best-iterate tracking, the optimizer step, the finiteness checks): 1.0 is
none. Every workload runs under each compute variant (``trustlab.compute``: fp32 or bf16 autocast,
channels-last, ``torch.compile``), and its floor under the same variant; the variants run side by side in one
process, interleaved and repeated after a warm-up pass of each (which also compiles), and the speed-up of each
variant over ``fp32`` is the median of the per-repeat ratios of images per second.

    python benchmarks/training_throughput.py --quick                      # CPU smoke run, 1-2 minutes
    python benchmarks/training_throughput.py --device cuda --variants fp32 bf16 channels-last bf16+channels-last \\
        bf16+channels-last+compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from trustlab import LpBall
from trustlab.attacks import PGD, attack_batched
from trustlab.compute import Compute, prepare
from trustlab.data import make_loader
from trustlab.data.loader import place_training_set
from trustlab.device import resolve_device
from trustlab.errors import DataError
from trustlab.models import build_model
from trustlab.training.defenses import build_defense
from trustlab.training.loop import train_epoch

CIFAR_SHAPE = (3, 32, 32)
EPS, STEP = 8 / 255, 2 / 255
WORKLOADS = ("standard", "fgsm-rs", "pgd10", "pgd20-eval")
# (input passes, training passes, extra forwards) per batch: what each workload costs in plain passes
PASSES = {"standard": (0, 1, 0), "fgsm-rs": (1, 1, 0), "pgd10": (10, 1, 0), "pgd20-eval": (20, 0, 1)}
FULL = {"batch": 128, "batches": 4, "repeats": 5}
QUICK = {"batch": 4, "batches": 1, "repeats": 3, "variants": ["fp32", "bf16", "channels-last"]}
VARIANTS = {
    "fp32": Compute(),
    "bf16": Compute("bf16"),
    "channels-last": Compute(channels_last=True),
    "compile": Compute(compile=True),
    "bf16+channels-last": Compute("bf16", channels_last=True),
    "bf16+compile": Compute("bf16", compile=True),
    "bf16+channels-last+compile": Compute("bf16", channels_last=True, compile=True),
}


def cifar_batches(n: int, *, root: str | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` CIFAR-10 training images if the files are there, else ``n`` uniform random ones."""
    try:
        from trustlab.data import load_dataset

        x, y = load_dataset("cifar10", "train", root=root, download=False)
        return x[:n].contiguous(), y[:n].contiguous(), "CIFAR-10 training images"
    except DataError:
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(n, *CIFAR_SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g),
                "random images of CIFAR-10's shape (no CIFAR-10 files found)")


class Bench:
    """One compute variant: its own model, optimizer and data on the device, and a timed call per workload."""

    def __init__(self, compute: Compute, x: torch.Tensor, y: torch.Tensor, *, batch: int, device: torch.device):
        self.device, self.batch = device, batch
        self.model = build_model("preact-resnet18", in_shape=CIFAR_SHAPE, num_classes=10, seed=0).to(device)
        self.run = prepare(self.model, compute, device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.x, self.y, pin = place_training_set(x, y, device)
        self.loader = make_loader(self.x, self.y, batch_size=batch, shuffle=False, pin_memory=pin)
        self.x_dev, self.y_dev = self.x.to(device), self.y.to(device)
        self.threat = LpBall(EPS)
        self.objectives = {"standard": build_defense("none").objective(self.threat),
                           "fgsm-rs": build_defense("fgsm-rs", step_size=10 / 255).objective(self.threat),
                           "pgd10": build_defense("pgd", steps=10, step_size=STEP).objective(self.threat)}

    def workload(self, name: str) -> Callable[[], None]:
        if name == "pgd20-eval":
            attack = PGD(self.threat, steps=20, step_size=STEP)
            return lambda: attack_batched(attack, self.run, self.x_dev, self.y_dev, batch_size=self.batch,
                                          generator=torch.Generator(self.device).manual_seed(1))
        return lambda: train_epoch(self.run, self.loader, self.optimizer, self.scheduler,
                                   objective=self.objectives[name], device=self.device, progress=False,
                                   generator=torch.Generator(self.device).manual_seed(1))

    def floor(self, name: str) -> Callable[[], None]:
        inputs, trains, forwards = PASSES[name]

        def run() -> None:
            for i in range(0, len(self.x_dev), self.batch):
                x, y = self.x_dev[i : i + self.batch], self.y_dev[i : i + self.batch]
                self.run.eval()
                for _ in range(inputs):
                    x_in = x.detach().requires_grad_(True)
                    torch.autograd.grad(F.cross_entropy(self.run(x_in), y, reduction="sum"), x_in)
                with torch.no_grad():
                    for _ in range(forwards):
                        self.run(x)
                self.run.train()
                for _ in range(trains):
                    self.optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(self.run(x), y).backward()
            self.run.eval()

        return run


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call, waiting for the device's queued work at both ends (CPU
    time ignores time spent descheduled, so on a busy CPU its ratios are the ones to read; on CUDA it is the
    host's time only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(benches: dict[str, Bench], workloads: list[str], *, repeats: int,
            device: torch.device) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """Seconds per repeat of every (variant, workload, "work" | "floor"), interleaved: each repeat runs every
    variant's workload and floor, alternating which of the pair goes first, so drifts in load hit all alike."""
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for r in range(repeats):
        for variant, bench in benches.items():
            for name in workloads:
                pair = [("work", bench.workload(name)), ("floor", bench.floor(name))]
                for kind, fn in pair if r % 2 == 0 else pair[::-1]:
                    times.setdefault((variant, name, kind), []).append(timed(fn, device))
    return times


def report(times: dict[tuple[str, str, str], list[tuple[float, float]]], variants: list[str],
           workloads: list[str], n: int, *, cpu: bool) -> list[str]:
    """One line per (workload, variant): images/s of the workload and of its floor (wall clock), the ratio
    workload / floor (min and median over repeats), and the speed-up over the first variant (median of
    per-repeat ratios); with ``cpu``, the two medians again in process CPU time."""
    head = (f"{'workload':<11} {'variant':<27} {'img/s':>8} {'floor img/s':>12} {'ratio min':>10} "
            f"{'ratio median':>13} {'vs ' + variants[0]:>14}")
    lines = [head + (f" {'cpu ratio':>10} {'cpu vs ' + variants[0]:>14}" if cpu else "")]
    for name in workloads:
        base = times[(variants[0], name, "work")]
        for variant in variants:
            work, floor = times[(variant, name, "work")], times[(variant, name, "floor")]
            ratios = [w[0] / f[0] for w, f in zip(work, floor)]
            speedup = statistics.median(b[0] / w[0] for b, w in zip(base, work))
            line = (f"{name:<11} {variant:<27} {n / statistics.median(w[0] for w in work):>8.1f} "
                    f"{n / statistics.median(f[0] for f in floor):>12.1f} {min(ratios):>10.3f} "
                    f"{statistics.median(ratios):>13.3f} {speedup:>13.2f}x")
            if cpu:
                cpu_ratio = statistics.median(w[1] / f[1] for w, f in zip(work, floor))
                cpu_speedup = statistics.median(b[1] / w[1] for b, w in zip(base, work))
                line += f" {cpu_ratio:>10.3f} {cpu_speedup:>13.2f}x"
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch", type=int, help="batch size (default 128, Wong et al.'s)")
    parser.add_argument("--batches", type=int, help="batches per timed call (default 4)")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 5)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="compute variants, the first the baseline of the speed-ups (default: fp32, bf16, "
                             "channels-last, bf16+channels-last, bf16+channels-last+compile on CUDA; fp32 on the CPU)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--root", default=None, help="data root with cifar10/ (default $TRUSTLAB_DATA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="a CPU smoke run of 1-2 minutes: batch 4, 1 batch, 3 repeats, fp32, bf16 and "
                             "channels-last, PGD workloads included (flags given explicitly still win)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = args.variants or (["fp32", "bf16", "channels-last", "bf16+channels-last", "bf16+channels-last+compile"]
                                 if device.type == "cuda" else ["fp32"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # each variant's convolutions pick their fastest kernels in warm-up
    n = args.batch * args.batches
    x, y, source = cifar_batches(n, root=args.root)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; PreAct ResNet-18 on {n} {source}, batch {args.batch}, "
          f"eps 8/255, {args.repeats} repeats; load average {os.getloadavg()[0]:.2f}", flush=True)
    benches = {v: Bench(VARIANTS[v], x, y, batch=args.batch, device=device) for v in variants}
    t0 = time.perf_counter()
    for bench in benches.values():  # warm-up: allocator, kernel choice, and compilation
        for w in args.workloads:
            bench.workload(w)(), bench.floor(w)()
    print(f"warm-up (compilation included) {time.perf_counter() - t0:.1f} s", flush=True)
    times = measure(benches, args.workloads, repeats=args.repeats, device=device)
    print("\n".join(report(times, variants, args.workloads, n, cpu=device.type == "cpu")), flush=True)
    print(f"floor: the same model's plain passes in this run, per batch {PASSES} (input passes, training passes, "
          "forwards); ratio = workload / floor")


if __name__ == "__main__":
    main()
