"""Affine operators: the linear pieces of a network, applied forward and transposed, never as dense matrices.

Every operator is an affine map ``x -> W x + b`` between per-example shapes ``in_shape -> out_shape``, given by
four operations on batches:

- ``forward(x)``: ``W x + b``, ``(B, *in) -> (B, *out)``;
- ``forward_abs(r)``: ``|W| r`` (no bias), for interval arithmetic (IBP);
- ``backward(lam)``: ``lam W``, ``(B, S, *out) -> (B, S, *in)``, one row per specification, for back-substitution
  (CROWN); a convolution does this with ``conv_transpose2d``, so a conv net's Jacobian is never materialised;
- ``bias_dot(lam)``: ``<lam, b>`` per row, ``(B, S, *out) -> (B, S)``.

``B`` is the batch of examples, or 1 for rows shared by every example (broadcast later). An :class:`AffineBlock`
chains the operators that stand between two ReLUs. Tensors are referenced, not copied: a bound computed from a
block is differentiable in the model's parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AffineOp", "Dense", "Conv", "Elementwise", "Reshape", "AffineBlock"]

Shape = tuple[int, ...]


class AffineOp:
    """An affine map between per-example shapes (the interface shared by the operators below)."""

    in_shape: Shape
    out_shape: Shape

    def forward(self, x: Tensor) -> Tensor:
        """``W x + b``: ``(B, *in_shape) -> (B, *out_shape)``."""
        raise NotImplementedError

    def forward_abs(self, r: Tensor) -> Tensor:
        """``|W| r``: ``(B, *in_shape) -> (B, *out_shape)``."""
        raise NotImplementedError

    def backward(self, lam: Tensor) -> Tensor:
        """``lam W``: ``(B, S, *out_shape) -> (B, S, *in_shape)``."""
        raise NotImplementedError

    def bias_dot(self, lam: Tensor) -> Tensor | None:
        """``<lam, b>`` per row, ``(B, S, *out_shape) -> (B, S)``; ``None`` when there is no bias."""
        raise NotImplementedError


def _rows(lam: Tensor, shape: Shape) -> Tensor:
    """``(B, S, *out) -> (B * S, *shape)`` for operators that act on one row at a time."""
    return lam.reshape(-1, *shape)


def _dot_bias(lam: Tensor, bias: Tensor | None, out_shape: Shape) -> Tensor | None:
    """``sum_i lam[..., i] * b_i`` over the per-example dims, with ``b`` broadcast to ``out_shape``."""
    if bias is None:
        return None
    return (lam * bias.expand(out_shape)).flatten(2).sum(2)


@dataclass(frozen=True, eq=False)
class Dense(AffineOp):
    """``x -> W x + b`` on flat inputs (``nn.Linear``, or a linear layer folded with what follows it).

    Shapes:
        weight ``(out, in)``, bias ``(out,)`` or ``None``; in_shape ``(in,)``, out_shape ``(out,)``.
    """

    weight: Tensor
    bias: Tensor | None

    @property
    def in_shape(self) -> Shape:  # type: ignore[override]
        return (self.weight.shape[1],)

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        return (self.weight.shape[0],)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return F.linear(r, self.weight.abs())

    def backward(self, lam: Tensor) -> Tensor:
        return lam @ self.weight  # (B, S, out) @ (out, in) -> (B, S, in)

    def bias_dot(self, lam: Tensor) -> Tensor | None:
        return None if self.bias is None else lam @ self.bias


@dataclass(frozen=True, eq=False)
class Conv(AffineOp):
    """A 2-D convolution with zero padding (``nn.Conv2d``, and average pooling as a depthwise one).

    ``backward`` is the transposed convolution with the output padding that restores ``in_shape`` exactly.

    Shapes:
        weight ``(C_out, C_in / groups, kh, kw)``, bias ``(C_out,)`` or ``None``; ``(C_in, H, W) -> (C_out, H', W')``.
    """

    weight: Tensor
    bias: Tensor | None
    in_shape: Shape  # type: ignore[misc]
    out_shape: Shape  # type: ignore[misc]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self._conv(r, self.weight.abs(), None)

    def output_padding(self) -> tuple[int, int]:
        """What ``conv_transpose2d`` must add so that its output has the input's height and width."""
        k = self.weight.shape[2:]
        pads = []
        for i in range(2):
            reached = (self.out_shape[1 + i] - 1) * self.stride[i] - 2 * self.padding[i]
            reached += self.dilation[i] * (k[i] - 1) + 1
            pads.append(self.in_shape[1 + i] - reached)
        return pads[0], pads[1]

    def backward(self, lam: Tensor) -> Tensor:
        b, s = lam.shape[:2]
        rows = _rows(lam, self.out_shape)
        c_out, c_in, kh, kw = self.weight.shape
        if self.groups == 1 and c_in * kh * kw <= c_out:
            # few input channels (a first layer): W^T per position, then fold the patches back (col2im); measured
            # 3x faster than conv_transpose2d on the CPU for cnn-small's first convolution, and equal to it
            cols = self.weight.reshape(c_out, -1).t() @ rows.flatten(2)  # (M, C_out, L) -> (M, C_in*kh*kw, L)
            out = F.fold(cols, self.in_shape[1:], (kh, kw), self.dilation, self.padding, self.stride)
        else:
            out = F.conv_transpose2d(rows, self.weight, None, self.stride, self.padding, self.output_padding(),
                                     self.groups, self.dilation)
        return out.view(b, s, *self.in_shape)

    def bias_dot(self, lam: Tensor) -> Tensor | None:
        if self.bias is None:
            return None
        return torch.einsum("bschw,c->bs", lam, self.bias)


@dataclass(frozen=True, eq=False)
class Elementwise(AffineOp):
    """``x -> scale * x + shift`` elementwise (a Normalize layer, ``(x - mean) / std``, BatchNorm in eval mode).

    Shapes:
        ``scale`` and ``shift`` broadcast to ``shape`` (e.g. ``(C, 1, 1)`` per channel); ``shape -> shape``.
    """

    scale: Tensor
    shift: Tensor
    shape: Shape

    @property
    def in_shape(self) -> Shape:  # type: ignore[override]
        return self.shape

    @property
    def out_shape(self) -> Shape:  # type: ignore[override]
        return self.shape

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def forward_abs(self, r: Tensor) -> Tensor:
        return r * self.scale.abs()

    def backward(self, lam: Tensor) -> Tensor:
        return lam * self.scale

    def bias_dot(self, lam: Tensor) -> Tensor | None:
        return _dot_bias(lam, self.shift, self.shape)


@dataclass(frozen=True, eq=False)
class Reshape(AffineOp):
    """A row-major reshape of each example (``nn.Flatten``, ``x.view(x.size(0), -1)``): a permutation-free identity."""

    in_shape: Shape  # type: ignore[misc]
    out_shape: Shape  # type: ignore[misc]

    def __post_init__(self) -> None:
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"cannot reshape {self.in_shape} to {self.out_shape}: sizes differ")

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def forward_abs(self, r: Tensor) -> Tensor:
        return self.forward(r)

    def backward(self, lam: Tensor) -> Tensor:
        return lam.reshape(*lam.shape[:2], *self.in_shape)

    def bias_dot(self, lam: Tensor) -> Tensor | None:
        return None


@dataclass(frozen=True, eq=False)
class AffineBlock:
    """The affine operators between two ReLUs, applied in order; with no operator, the identity on ``shape``.

    Args:
        ops: the operators, first to last; each one's ``out_shape`` is the next one's ``in_shape``.
        shape: the per-example input shape (needed when ``ops`` is empty).

    Raises:
        ValueError: if consecutive shapes do not match.
    """

    ops: tuple[AffineOp, ...]
    shape: Shape

    def __post_init__(self) -> None:
        current = self.shape
        for op in self.ops:
            if tuple(op.in_shape) != tuple(current):
                raise ValueError(f"{type(op).__name__} expects per-example shape {op.in_shape}, got {current}")
            current = tuple(op.out_shape)

    @property
    def in_shape(self) -> Shape:
        return tuple(self.shape)

    @property
    def out_shape(self) -> Shape:
        return tuple(self.ops[-1].out_shape) if self.ops else tuple(self.shape)

    def forward(self, x: Tensor) -> Tensor:
        """The block applied to a batch: ``(B, *in_shape) -> (B, *out_shape)``."""
        for op in self.ops:
            x = op.forward(x)
        return x

    def interval(self, mid: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
        """Interval arithmetic, operator by operator: the centre and radius of a box containing the image of
        the box ``[mid - rad, mid + rad]`` (Gowal et al. 2018, eq. 6)."""
        for op in self.ops:
            mid, rad = op.forward(mid), op.forward_abs(rad)
        return mid, rad

    def backward(self, lam: Tensor) -> tuple[Tensor, Tensor | None]:
        """Back-substitution through the block: for ``y = block(x)``, ``lam y = lam' x + const``.

        Args:
            lam: rows on the block's output, ``(B, S, *out_shape)``.

        Returns:
            ``lam'`` of shape ``(B, S, *in_shape)`` and ``const`` of shape ``(B, S)`` (``None`` if no bias).
        """
        const: Tensor | None = None
        for op in reversed(self.ops):
            c = op.bias_dot(lam)
            if c is not None:
                const = c if const is None else const + c
            lam = op.backward(lam)
        return lam, const
