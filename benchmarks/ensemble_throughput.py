"""APGD and the ensemble against their floors: the bare forward(+backward) passes they cannot avoid.

(a) APGD-CE with 100 steps must cost about 100 forward+backward passes of the model on the batch (its loss, step
    size schedule and projections should be noise): it is timed against ``floor`` of ``attack_throughput.py``,
    100 passes computing the input gradient of the same model on the same batch.
(b) The ensemble (``standard-v1``, or small budgets with ``--quick``) must cost about the sum of its members'
    floors: each member's floor is the passes it made on the examples it attacked, replayed as bare passes. The
    passes are counted in one extra run through a counting wrapper of the model (the batch size of each forward
    and how many backward passes went through its output, per member); the replay makes the same forward passes
    on inputs of the same size, with the same backward passes. What the ensemble adds beyond that (its own
    predictions, the losses, the projections, Square's bookkeeping) is the ratio's excess over 1.

Each pair is timed interleaved after a warm-up, alternating which goes first, and the min and median of the
ratio are printed. The model is cnn-small, briefly trained (``--train-steps``), attacked at a small eps so
that the later members have points left to attack, on the first ``--n`` MNIST test images if
``$TRUSTLAB_DATA`` holds MNIST, else on digits.
Other processes on the machine inflate the spread; the load average is printed.

    python benchmarks/ensemble_throughput.py --repeats 3
    python benchmarks/ensemble_throughput.py --quick   # seconds: 50 images, small budgets, 2 repeats
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attack_throughput import floor, timed, tune_malloc  # this folder's conventions: the same floor and clock
from trustlab import LpBall
from trustlab.attacks import APGD, APGDT, FABT, Ensemble, Square, ensemble_with_log
from trustlab.data import load_dataset
from trustlab.evaluation.attack_run import member_names
from trustlab.models import build_model


def data(n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """Train and first ``n`` test images of MNIST if ``$TRUSTLAB_DATA`` holds it (never downloaded), else digits."""
    root = os.environ.get("TRUSTLAB_DATA")
    name = "mnist" if root and (Path(root) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file() else "digits"
    x_train, y_train = load_dataset(name, "train", download=False)
    x_test, y_test = load_dataset(name, "test", download=False)
    return x_train, y_train, x_test[:n], y_test[:n], name


def train(model: nn.Module, x: Tensor, y: Tensor, *, steps: int, batch: int = 128) -> nn.Module:
    """A few plain SGD steps: a model that classifies, so the ensemble's later members get work."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


class Counting(nn.Module):
    """The model, recording per forward pass ``(member, batch size, backward passes through its output)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.member, self.events = model, None, []

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        event = [self.member, len(x), 0]
        self.events.append(event)
        if out.requires_grad:

            def backward_seen(grad: Tensor) -> Tensor:
                event[2] += 1
                return grad

            out.register_hook(backward_seen)
        return out


class Tagged:
    """A member that tells the counting model it is running, so passes are charged to it."""

    def __init__(self, attack: Any, j: int, counter: Counting) -> None:
        self.attack, self.j, self.counter, self.threat = attack, j, counter, attack.threat

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **kw: Any) -> Tensor:
        self.counter.member = self.j
        try:
            return self.attack(model, x, y, **kw)
        finally:
            self.counter.member = None


def replay(model: nn.Module, x: Tensor, events: list[tuple[int, int]]) -> None:
    """Bare passes: per event a forward on ``n`` inputs and ``b`` backward passes to the input through it."""
    for n, b in events:
        x_in = x.repeat((n + len(x) - 1) // len(x), *[1] * (x.dim() - 1))[:n]  # (n, *D), tiled when n > len(x)
        if b == 0:
            with torch.no_grad():
                model(x_in)
            continue
        x_in = x_in.detach().requires_grad_(True)
        out = model(x_in).sum()
        for k in range(b):
            torch.autograd.grad(out, x_in, retain_graph=k < b - 1)


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each function per repeat, after a warm-up, alternating the order."""
    for fn in fns.values():
        fn()
    order, walls = list(fns.items()), {k: [] for k in fns}
    for r in range(repeats):
        for label, fn in order if r % 2 == 0 else order[::-1]:
            walls[label].append(timed(fn)[0])
    return walls


def ratio_row(label: str, walls: dict[str, list[float]], a: str, b: str) -> str:
    ratios = [p / q for p, q in zip(walls[a], walls[b])]
    return (f"{label:<26} {1e3 * statistics.median(walls[a]):>11.1f} {1e3 * statistics.median(walls[b]):>11.1f} "
            f"{min(ratios):>10.3f} {statistics.median(ratios):>13.3f}")


def members(threat: LpBall, quick: bool) -> Ensemble:
    if not quick:
        return Ensemble(threat, version="standard")
    return Ensemble(threat, version="custom", members=(
        APGD(threat, steps=10, restarts=1, loss="ce"),
        APGDT(threat, steps=10, n_target_classes=3, restarts=1, loss="dlr-targeted"),
        FABT(threat, steps=10, n_target_classes=3, restarts=1),
        Square(threat, queries=200, p_init=0.8, loss="margin")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="test images (default 500)")
    parser.add_argument("--eps", type=float, default=0.05,
                        help="l_inf radius (default 0.05: the briefly trained model is not robust, and at 0.3 "
                             "APGD-CE breaks every point, leaving the other members nothing to attack)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (default 3)")
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps before attacking (default 300)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: 50 images, 100 SGD steps, ensemble budgets cut (APGD 10 steps, 3 targets, "
                             "Square 200 queries), 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.train_steps = 50, 2, 100
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tuned = tune_malloc()
    x_train, y_train, x, y, dataset = data(args.n)
    torch.manual_seed(0)
    model = train(build_model("cnn-small", in_shape=tuple(x.shape[1:]), num_classes=10, seed=0), x_train, y_train,
                  steps=args.train_steps)
    threat = LpBall(args.eps)
    config = members(threat, args.quick)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, cnn-small on {args.n} "
          f"{dataset} test images, l_inf eps={args.eps}, ensemble {config.to_dict()['version']}, {args.repeats} "
          f"repeats, malloc tuned: {tuned}, load average {os.getloadavg()[0]:.2f} (other processes inflate the "
          "spread)")
    print(f"{'':<26} {'attack ms':>11} {'floor ms':>11} {'ratio min':>10} {'ratio median':>13}")

    apgd = APGD(threat, steps=100, restarts=1, loss="ce")
    walls = interleaved({"apgd": lambda: apgd(model, x, y, generator=torch.Generator().manual_seed(1)),
                         "floor": lambda: floor(model, x, y, 100)}, args.repeats)
    print(ratio_row("(a) APGD-CE 100 / 100 f+b", walls, "apgd", "floor"))

    counter = Counting(model).eval()
    attacks = config.attacks()
    log = ensemble_with_log(counter, x, y, threat, attacks=[Tagged(a, j, counter) for j, a in enumerate(attacks)],
                            generator=torch.Generator().manual_seed(1))
    per_member = [[(n, b) for m, n, b in counter.events if m == j] for j in range(len(attacks))]
    walls = interleaved({
        "ensemble": lambda: ensemble_with_log(model, x, y, threat, attacks=attacks,
                                              generator=torch.Generator().manual_seed(1)),
        "floor": lambda: [replay(model, x[log.attacked[j]] if log.attacked[j].any() else x, ev)
                          for j, ev in enumerate(per_member)]}, args.repeats)
    print(ratio_row("(b) ensemble / sum floors", walls, "ensemble", "floor"))
    print(f"ensemble members on {int(log.correct.sum())} correctly classified of {len(x)}:")
    print(f"  {'member':<8} {'attacked':>8} {'broken':>7} {'forwards':>9} {'backwards':>10} {'seconds':>8}")
    for j, name in enumerate(member_names([a.to_dict() for a in attacks])):
        fwd, bwd = sum(n for n, _ in per_member[j]), sum(n * b for n, b in per_member[j])
        print(f"  {name:<8} {int(log.attacked[j].sum()):>8} {int(log.broken[j].sum()):>7} "
              f"{fwd:>9} {bwd:>10} {log.seconds[j]:>8.2f}   (passes x examples, counted run)")


if __name__ == "__main__":
    main()
