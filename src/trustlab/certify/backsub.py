"""Back-substitution: a linear lower bound of ``lam . z`` pushed back through ReLUs and affine blocks to the input.

The common core of CROWN, CROWN-IBP and alpha-CROWN. Given bounds ``l <= z_i <= u`` on the inputs of the ReLUs
below a layer, each ReLU ``a = relu(z)`` is enclosed between two lines (Zhang et al. 2018, Sec. 3.2, Fig. 1):

- unstable (``l < 0 < u``): ``alpha z <= a <= u / (u - l) (z - l)``, with the lower slope ``alpha`` in ``[0, 1]``;
  CROWN takes ``alpha = 1`` if ``u >= -l`` and 0 otherwise (the "adaptive" choice, smaller area);
- stable: ``a = z`` (``l >= 0``) or ``a = 0`` (``u <= 0``).

For a lower bound of ``lam . a``, a positive entry of ``lam`` takes the lower line and a negative one the upper
line; the result is a linear function of ``z`` plus a constant, and the affine block below maps it to its own
input with ``lam W`` and ``lam . b``. At the input the linear function is minimised over the threat set
(:func:`trustlab.certify.domain.concretize`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from trustlab.certify.domain import apply_rows, concretize
from trustlab.certify.network import Network
from trustlab.threat import LpBall

__all__ = [
    "ELEMENT_BUDGET",
    "relu_relaxation",
    "adaptive_slope",
    "relu_backward",
    "backsubstitute",
    "layer_bounds",
    "crown_rows",
]

# Rows of an intermediate layer go back in chunks whose widest tensor has about this many elements: on the CPU
# 2**22 (16 MB in float32) was measured fastest for cnn-small (2x faster than 2**25, whose temporaries glibc
# maps and unmaps on every chunk); accelerators take larger chunks.
ELEMENT_BUDGET = {"cpu": 2**22, "other": 2**26}
Interval = tuple[Tensor, Tensor]


def relu_relaxation(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed parts of the ReLU relaxation: unstable mask, upper slope and upper intercept.

    Returns:
        ``unstable`` (bool), ``s`` and ``t`` with ``relu(z) <= s z + t`` on ``[lower, upper]``: the chord
        ``u / (u - l) (z - l)`` where unstable, ``z`` where active, 0 where inactive.

    Shapes:
        lower, upper (N, *shape) -> three tensors (N, *shape).
    """
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lower.dtype)
    width = (upper - lower).clamp_min(torch.finfo(lower.dtype).tiny)  # only read where unstable (u - l > 0)
    s = torch.where(unstable, upper / width, active)
    t = torch.where(unstable, -s * lower, torch.zeros_like(lower))
    return unstable, s, t


def adaptive_slope(lower: Tensor, upper: Tensor) -> Tensor:
    """CROWN's lower slope: 1 where active or unstable with ``u >= -l``, else 0 (Zhang et al. 2018, Sec. 3.2)."""
    return ((upper >= -lower) & (upper > 0)).to(lower.dtype)


def relu_backward(lam: Tensor, bounds: Interval, alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Back through ``a = relu(z)``: ``lam . a >= lam' . z + const`` on ``l <= z <= u``.

    Args:
        lam: rows on ``a``, ``(B, S, *shape)``.
        bounds: ``(l, u)`` of ``z``, each ``(N, *shape)``.
        alpha: lower slopes of the unstable neurons, ``(N, S, *shape)`` in ``[0, 1]`` (one per row, as in
            alpha-CROWN), or ``None`` for CROWN's adaptive slopes.

    Returns:
        ``lam'`` of shape ``(N, S, *shape)`` (or ``(B, ...)`` when nothing depends on the example) and ``const``
        of shape ``(N, S)``.
    """
    lower, upper = bounds
    unstable, s, t = relu_relaxation(lower, upper)
    if alpha is None:
        slope = adaptive_slope(lower, upper).unsqueeze(1)  # (N, 1, *shape)
    else:
        slope = torch.where(unstable.unsqueeze(1), alpha, (lower >= 0).to(lower.dtype).unsqueeze(1))
    const = apply_rows(lam.clamp(max=0).flatten(2), t.flatten(1))  # (N, S): the upper lines' intercepts
    return lam * torch.where(lam >= 0, slope, s.unsqueeze(1)), const


def backsubstitute(network: Network, m: int, lam: Tensor, pre: Sequence[Interval], x: Tensor, threat: LpBall, *,
                   alphas: Sequence[Tensor] | None = None) -> Tensor:
    """A lower bound of ``lam . A_m(a_m)`` over the threat set, by back-substitution to the input.

    Args:
        network: the network.
        m: the block whose output the rows act on (``0 <= m <= L``; ``m = L`` is the logits).
        lam: rows on the output of block ``m``, ``(B, S, *out_shape)``, ``B`` in ``{1, N}``.
        pre: bounds of the pre-activations ``z_1 .. z_m`` (at least ``m`` of them), each ``(N, *shape)``.
        x: centres of the threat balls, ``(N, *D)``.
        threat: the perturbation set.
        alphas: lower slopes per ReLU layer ``1 .. m``, each ``(N, S, *shape)``; ``None`` for CROWN's.

    Returns:
        ``(N, S)`` lower bounds.

    Reference:
        Zhang et al., NeurIPS 2018, arXiv:1811.00866, Theorem 3.2 (eqs. 4-6).
    """
    const: Tensor | None = None
    for k in range(m, -1, -1):
        lam, c = network.blocks[k].backward(lam)
        const = c if const is None else (const if c is None else const + c)
        if k == 0:
            break
        lam, c = relu_backward(lam, pre[k - 1], None if alphas is None else alphas[k - 1])
        const = c if const is None else const + c
    bound = concretize(lam, x, threat)
    return bound if const is None else bound + const


def layer_bounds(network: Network, m: int, pre: Sequence[Interval], x: Tensor, threat: LpBall) -> Interval:
    """Bounds ``(l, u)`` of every neuron of block ``m``'s output (``m < L``), one row per neuron and sign.

    The rows ``+e_i`` and ``-e_i`` go back together, in chunks that keep the widest intermediate tensor near
    :data:`ELEMENT_BUDGET` elements; before the first ReLU they are shared by all examples (``B = 1``).

    Returns:
        ``l, u`` each of shape ``(N, *block_m.out_shape)``.
    """
    block = network.blocks[m]
    shape, n_units, n = block.out_shape, math.prod(block.out_shape), len(x)
    width = max(math.prod(s) for b in network.blocks[: m + 1] for s in _shapes(b))
    per_row = width * (n if m > 0 else 1)
    budget = ELEMENT_BUDGET["cpu" if x.device.type == "cpu" else "other"]
    chunk = max(1, min(n_units, budget // (2 * per_row)))
    lows, highs = [], []
    for start in range(0, n_units, chunk):
        c = min(chunk, n_units - start)
        eye = torch.zeros(1, 2 * c, n_units, dtype=x.dtype, device=x.device)
        idx = torch.arange(c, device=x.device)
        eye[0, idx, start + idx] = 1.0
        eye[0, c + idx, start + idx] = -1.0
        lb = backsubstitute(network, m, eye.view(1, 2 * c, *shape), pre, x, threat)  # (N, 2c)
        lows.append(lb[:, :c])
        highs.append(-lb[:, c:])
    return torch.cat(lows, 1).view(n, *shape), torch.cat(highs, 1).view(n, *shape)


def crown_rows(network: Network, num_specs: int) -> int:
    """Rows CROWN sends back per example: ``2 n_i`` for each ReLU layer ``i`` and ``2 S`` at the output.

    Each row is one vector-Jacobian product through the blocks below its layer (the "backward passes" of
    ``benchmarks/bounds.py``).
    """
    hidden = sum(math.prod(b.out_shape) for b in network.blocks[:-1])
    return 2 * hidden + 2 * num_specs


def _shapes(block) -> list[tuple[int, ...]]:
    return [block.in_shape] + [tuple(op.out_shape) for op in block.ops]
