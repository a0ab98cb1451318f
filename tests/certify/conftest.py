"""Fixtures for the certification tests: seeded random ReLU nets and the points a bound must contain.

``random_net(kind, seed)`` builds a random ReLU MLP or CNN (1-3 layers, width <= 16, weights N(0, 1), as in
reliability-tests CERT-01), optionally trained for a few steps on a random teacher's labels;
``observed_extremes(model, x, threat, spec)`` returns, per example and specification row, the smallest and largest
value of ``C f(x')`` seen at sampled points of the threat set, at its box corners (l_inf, dim <= 10) and at PGD
points that minimise and maximise each row. All randomness comes from explicit generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from trustlab import LpBall

TOL_ABS, TOL_REL = 1e-4, 1e-5  # float32 slack of a bound over a value it must contain (CERT-01 TOL_BOUND)


def _normal_(module: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def build_random_net(kind: str, seed: int, *, trained: bool = False,
                     dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tensor]:
    """A random ReLU net and 3 inputs in [0, 1]: an MLP on 2-6 features or a CNN on (C, 6, 6) images."""
    gen = torch.Generator().manual_seed(1000 + seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    layers: list[nn.Module] = []
    k = pick(2, 5)
    if kind == "mlp":
        shape = (pick(2, 6),)
        width = shape[0]
        for _ in range(pick(1, 3)):
            h = pick(2, 16)
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
    else:
        col2im = seed % 3 == 0  # a first conv with C_in * k * k <= C_out, whose transpose is col2im
        shape = (1 if col2im else pick(1, 2), 6, 6)
        c, side = shape[0], 6
        for i in range(pick(1, 2)):
            out_c, kernel, stride = (4, 2, pick(1, 2)) if col2im and i == 0 else (pick(2, 4), pick(2, 3), pick(1, 2))
            layers += [nn.Conv2d(c, out_c, kernel, stride=stride, padding=1), nn.ReLU()]
            c, side = out_c, (side + 2 - kernel) // stride + 1
        layers += [nn.Flatten()]
        width = c * side * side
        if pick(0, 1):
            layers += [nn.Linear(width, 8), nn.ReLU()]
            width = 8
    model = _normal_(nn.Sequential(*layers, nn.Linear(width, k)), gen).to(dtype)
    if trained:
        _train_on_teacher(model, shape, k, gen)
    x = torch.rand(3, *shape, generator=gen, dtype=dtype)
    return model.eval(), x


def _train_on_teacher(model: nn.Module, shape: tuple[int, ...], k: int, gen: torch.Generator) -> None:
    """Twenty Adam steps on inputs labelled by a random linear teacher (brief training, as CERT-01 asks)."""
    d = math.prod(shape)
    xs = torch.rand(128, *shape, generator=gen)
    teacher = torch.randn(d, k, generator=gen)
    ys = (xs.flatten(1) @ teacher).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(xs.to(next(model.parameters()).dtype)), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _rows(model: nn.Module, xs: Tensor, spec: Tensor | None) -> Tensor:
    """``C f(x)`` for a batch of points of every example: xs (N, P, *D) -> (N, P, S)."""
    n, p = xs.shape[:2]
    logits = model(xs.reshape(n * p, *xs.shape[2:])).view(n, p, -1)
    return logits if spec is None else torch.einsum("nsk,npk->nps", spec, logits)


def _corners(x: Tensor, threat: LpBall) -> Tensor | None:
    """All corners of the l_inf box of each example, (N, 2^d, *D), when d <= 10."""
    d = x[0].numel()
    if threat.p != math.inf or d > 10:
        return None
    lo, hi = threat.box(x)
    bits = torch.tensor([[(i >> j) & 1 for j in range(d)] for i in range(2**d)], dtype=x.dtype)  # (2^d, d)
    pts = lo.flatten(1).unsqueeze(1) + bits * (hi - lo).flatten(1).unsqueeze(1)
    return pts.view(len(x), 2**d, *x.shape[1:])


def _pgd_points(model: nn.Module, x: Tensor, threat: LpBall, spec: Tensor | None, gen: torch.Generator,
                steps: int = 20) -> Tensor:
    """PGD minimising and maximising each row separately: (N, 2S, *D) points of the threat set."""
    n = len(x)
    s = spec.shape[1] if spec is not None else model(x[:1]).shape[1]
    signs = torch.cat([torch.ones(s), -torch.ones(s)]).to(x.dtype)  # +: minimise the row, -: maximise it
    centre = x.repeat_interleave(2 * s, 0)  # (N * 2S, *D)
    x_adv = threat.random_init(centre, generator=gen)
    step = 2.5 * threat.eps / steps
    for _ in range(steps):
        x_in = x_adv.detach().requires_grad_(True)
        vals = _rows(model, x_in.view(n, 2 * s, *x.shape[1:]), spec)  # (N, 2S, S)
        (grad,) = torch.autograd.grad((_own_rows(vals, s) * signs).sum(), x_in)
        x_adv = threat.project(x_adv - step * threat.ascent_direction(grad), centre).detach()
    return x_adv.view(n, 2 * s, *x.shape[1:])


def _own_rows(vals: Tensor, s: int) -> Tensor:
    """Point ``j`` of an example attacks row ``j mod S``: vals (N, 2S, S) -> (N, 2S)."""
    idx = (torch.arange(2 * s) % s).view(1, 2 * s, 1).expand(vals.shape[0], 2 * s, 1)
    return vals.gather(2, idx).squeeze(2)


def observed_extremes(model: nn.Module, x: Tensor, threat: LpBall, spec: Tensor | None, *, seed: int = 0,
                      samples: int = 1000) -> tuple[Tensor, Tensor]:
    """The smallest and largest ``C f(x')`` seen in the threat set, per example and row: two (N, S) tensors."""
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    centre = x.repeat_interleave(samples, 0)
    pts = [threat.random_init(centre, generator=gen).view(n, samples, *x.shape[1:])]
    if threat.p == 2:  # points on the sphere, clipped into the box (still in the ball)
        g = torch.randn(centre.shape, generator=gen, dtype=x.dtype)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        pts.append(threat.clip_to_box(centre + threat.eps * g).view(n, samples, *x.shape[1:]))
    corners = _corners(x, threat)
    if corners is not None:
        pts.append(corners)
    pts.append(_pgd_points(model, x, threat, spec, gen))
    allpts = torch.cat(pts, 1)
    assert bool(threat.contains(allpts.flatten(0, 1), x.repeat_interleave(allpts.shape[1], 0), atol=1e-5).all())
    with torch.no_grad():
        vals = _rows(model, allpts, spec)
    return vals.amin(1), vals.amax(1)


def assert_contains(lower: Tensor, upper: Tensor, lo_seen: Tensor, hi_seen: Tensor) -> None:
    """Every observed value lies in ``[lower - tol, upper + tol]`` (CERT-01)."""
    tol = TOL_ABS + TOL_REL * torch.maximum(lo_seen.abs(), hi_seen.abs())
    assert bool((lower <= lo_seen + tol).all()), f"lower bound above an observed value: {(lower - lo_seen).max()}"
    assert bool((upper >= hi_seen - tol).all()), f"upper bound below an observed value: {(hi_seen - upper).max()}"


@pytest.fixture(scope="session")
def random_net() -> Callable[..., tuple[nn.Module, Tensor]]:
    """``(kind, seed, *, trained=False, dtype=float32) -> (model, x)``: see :func:`build_random_net`."""
    return build_random_net


@pytest.fixture(scope="session")
def extremes() -> Callable[..., tuple[Tensor, Tensor]]:
    """``(model, x, threat, spec) -> (min, max)`` of each row over points of the threat set."""
    return observed_extremes


@pytest.fixture(scope="session")
def contains() -> Callable[[Tensor, Tensor, Tensor, Tensor], None]:
    """``(lower, upper, seen_min, seen_max)``: assert the bounds contain every observed value."""
    return assert_contains
