"""Each affine operator's transposed application is the transpose of its forward map, and ``forward_abs`` is
``|W|``, checked against the explicit Jacobian (both convolution paths: col2im and conv_transpose2d)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trustlab.certify.operators import AffineBlock, Conv, Dense, Elementwise, Reshape

F64 = torch.float64


def _conv(c_in, c_out, k, *, stride=1, padding=0, dilation=1, groups=1, side=7):
    gen = torch.Generator().manual_seed(c_in * 100 + c_out * 10 + k)
    layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups).to(F64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=F64))
    out = layer(torch.zeros(1, c_in, side, side, dtype=F64)).shape[1:]
    return Conv(layer.weight, layer.bias, (c_in, side, side), tuple(out), layer.stride, layer.padding,
                layer.dilation, groups)


def _ops():
    gen = torch.Generator().manual_seed(0)
    return {
        "dense": Dense(torch.randn(5, 6, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)),
        "conv-col2im": _conv(1, 16, 4, stride=2, padding=1),  # C_in * k * k <= C_out: the fold path
        "conv-col2im-dilated": _conv(1, 9, 3, dilation=2, padding=1),
        "conv-transpose": _conv(2, 3, 3, stride=2, padding=1),
        "conv-grouped": _conv(4, 4, 3, groups=2, side=6),
        "conv-remainder": _conv(2, 3, 2, stride=3, side=8),  # the last row and column are never read
        "elementwise": Elementwise(torch.randn(3, 1, 1, generator=gen, dtype=F64),
                                   torch.randn(3, 1, 1, generator=gen, dtype=F64), (3, 2, 2)),
        "reshape": Reshape((2, 3, 2), (12,)),
    }


def _jacobian(op):
    """The dense ``W`` of ``op`` (out x in) and its bias (out,), from forward passes of unit vectors."""
    n_in = math.prod(op.in_shape)
    eye = torch.eye(n_in, dtype=F64).view(n_in, *op.in_shape)
    bias = op.forward(torch.zeros(1, *op.in_shape, dtype=F64)).flatten()
    return (op.forward(eye).flatten(1) - bias).t(), bias


@pytest.mark.parametrize("name", list(_ops()))
def test_backward_is_the_transpose_and_forward_abs_is_abs_w(name):
    op = _ops()[name]
    w, bias = _jacobian(op)
    gen = torch.Generator().manual_seed(1)
    lam = torch.randn(2, 3, *op.out_shape, generator=gen, dtype=F64)
    r = torch.rand(4, *op.in_shape, generator=gen, dtype=F64)
    back = op.backward(lam)
    assert back.shape == (2, 3, *op.in_shape)
    torch.testing.assert_close(back.flatten(2), lam.flatten(2) @ w)
    torch.testing.assert_close(op.forward_abs(r).flatten(1), r.flatten(1) @ w.abs().t())
    dot = op.bias_dot(lam)
    want = lam.flatten(2) @ bias
    torch.testing.assert_close(torch.zeros_like(want) if dot is None else dot, want)


def test_block_backward_composes_the_operators():
    ops = _ops()
    dense = Dense(torch.randn(2, 12, generator=torch.Generator().manual_seed(4), dtype=F64), None)
    block = AffineBlock((ops["elementwise"], Reshape((3, 2, 2), (12,)), dense), (3, 2, 2))
    x = torch.rand(3, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    lam = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    back, const = block.backward(lam)
    torch.testing.assert_close((back * x.unsqueeze(1)).flatten(2).sum(2) + const,
                               torch.einsum("nsk,nk->ns", lam, block.forward(x)))
    with pytest.raises(ValueError, match=r"expects per-example shape \(12,\), got \(3, 2, 2\)"):
        AffineBlock((Dense(torch.ones(2, 12), None),), (3, 2, 2))
