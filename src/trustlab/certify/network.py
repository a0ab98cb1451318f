"""The network form every certifier works on: affine blocks separated by ReLUs.

``f(x) = A_L(relu(A_{L-1}(... relu(A_0(x)))))``, where each block ``A_i`` is a chain of affine operators
(:mod:`trustlab.certify.operators`): Linear, Conv2d, Flatten and other reshapes, average pooling, and elementwise
affine maps (a Normalize layer ``(x - mean) / std``, or BatchNorm in eval mode). ``z_{i+1} = A_i(...)`` for
``i < L`` are the pre-activations, ``L`` the number of ReLU layers.

BatchNorm is merged into the block of the affine layer before it, as an elementwise map after it. Because it
scales each output channel, interval arithmetic through conv-then-BatchNorm equals interval arithmetic through
the folded conv (``|diag(s) W| = diag(|s|) |W|``) and back-substitution is exact either way, so the bounds are
those of the folded network, while gradients still reach BatchNorm's weight and bias.

The conversion reads the model with ``torch.fx`` (:func:`trustlab.certify.trace.trace_ops`), so functional ops
inside a custom ``forward`` are seen, and refuses everything else with one
:class:`~trustlab.errors.UnsupportedLayerError` listing every offending op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trustlab.certify.operators import AffineBlock, AffineOp
from trustlab.certify.spec import check_spec
from trustlab.certify.trace import PROBE_BATCH, RELU, trace_ops
from trustlab.errors import UnsupportedLayerError
from trustlab.threat import LpBall

__all__ = ["Network", "to_network", "prepare"]

_AGREEMENT_RTOL = 1e-4  # the network must reproduce the model on the probe within this (float32 reassociation)


@dataclass(frozen=True, eq=False)
class Network:
    """``A_L(relu(... relu(A_0(x))))``: ``L + 1`` affine blocks with a ReLU between consecutive ones.

    Args:
        blocks: ``A_0, ..., A_L``; each block's ``out_shape`` is the next one's ``in_shape``, and the last one
            maps to logits of per-example shape ``(K,)``.

    Raises:
        ValueError: if there is no block, shapes do not chain, or the output is not ``(K,)`` with ``K >= 2``.

    Shapes:
        ``(N, *in_shape) -> (N, K)``.
    """

    blocks: tuple[AffineBlock, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("a network needs at least one affine block")
        for prev, nxt in zip(self.blocks, self.blocks[1:]):
            if prev.out_shape != nxt.in_shape:
                raise ValueError(f"block output {prev.out_shape} does not match the next block's input {nxt.in_shape}")
        out = self.blocks[-1].out_shape
        if len(out) != 1 or out[0] < 2:
            raise ValueError(f"the network must end in logits of per-example shape (K,) with K >= 2, got {out}")

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Per-example input shape."""
        return self.blocks[0].in_shape

    @property
    def num_classes(self) -> int:
        """``K``, the number of logits."""
        return self.blocks[-1].out_shape[0]

    @property
    def depth(self) -> int:
        """``L``, the number of ReLU layers."""
        return len(self.blocks) - 1

    def forward(self, x: Tensor) -> Tensor:
        """The logits ``(N, K)`` of a batch ``(N, *in_shape)``."""
        for i, block in enumerate(self.blocks):
            x = block.forward(x if i == 0 else torch.relu(x))
        return x

    __call__ = forward


def to_network(model: nn.Module | Network, x: Tensor) -> Network:
    """Convert ``model`` into a :class:`Network` (a :class:`Network` is returned as it is).

    The conversion traces ``model`` with ``torch.fx``, walks the graph with a probe batch of ``x``'s per-example
    shape, dtype and device, groups the affine operators between ReLUs into blocks, and checks that the result
    reproduces the model on the probe. Parameters are referenced, not copied: bounds computed from the network
    are differentiable in them. Rebuild the network after an optimiser step that changes BatchNorm parameters
    (its elementwise map is derived from them).

    Args:
        model: an ``nn.Module`` in eval mode mapping ``(N, *D)`` to logits ``(N, K)``, or a :class:`Network`.
        x: an example batch ``(N, *D)``; only its per-example shape, dtype and device are read.

    Returns:
        The network, with ``network.forward`` equal to ``model`` (up to float rounding).

    Raises:
        UnsupportedLayerError: the model contains ops that are not affine or ReLU, branches, Dropout, or is in
            training mode; every offending op is listed (CERT-08). Also when the traced network disagrees with
            the model (e.g. data-dependent control flow that tracing froze).
        TypeError: ``model`` is not an ``nn.Module`` or :class:`Network`, or ``x`` is not a tensor.
        ValueError: ``x`` is not batched, the model does not end in ``(N, K)`` logits, or fails on ``x``'s shape.
    """
    if isinstance(model, Network):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a certify.Network, got {type(model).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape (N, *D), got shape {tuple(x.shape)}")
    ops = trace_ops(model, x)
    network = Network(_group(ops, tuple(x.shape[1:])))
    _check_agreement(model, network, x)
    return network


def _group(ops: list[AffineOp | str], in_shape: tuple[int, ...]) -> tuple[AffineBlock, ...]:
    """Split the op list at the ReLUs: ``[op, op, RELU, op, RELU, op] -> (A_0, A_1, A_2)``."""
    blocks: list[AffineBlock] = []
    current: list[AffineOp] = []
    shape = in_shape
    for op in ops:
        if op == RELU:
            blocks.append(AffineBlock(tuple(current), shape))
            shape, current = blocks[-1].out_shape, []
        else:
            current.append(op)  # type: ignore[arg-type]
    blocks.append(AffineBlock(tuple(current), shape))
    return tuple(blocks)


def _check_agreement(model: nn.Module, network: Network, x: Tensor) -> None:
    """The network must compute the model's function: compared on a seeded random probe batch."""
    gen = torch.Generator(device=x.device).manual_seed(1)
    probe = torch.rand((PROBE_BATCH, *x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        want, got = model(probe), network.forward(probe)
    if want.shape != got.shape:
        raise ValueError(f"the model returns shape {tuple(want.shape)}, expected logits (N, K) = {tuple(got.shape)}")
    scale = 1.0 + float(want.abs().max())
    err = float((want - got).abs().max())
    if not math.isfinite(err) or err > _AGREEMENT_RTOL * scale:
        raise UnsupportedLayerError(
            f"the traced network differs from {type(model).__name__} by {err:.3g} on a probe input; the forward "
            "may branch on data, which tracing cannot follow", ops=("data-dependent forward",))


def prepare(model: nn.Module | Network, x: Tensor, threat: LpBall, spec: Tensor | None) -> tuple[Network, Tensor]:
    """What every bound method does first: the network, and the rows ``[C; -C]`` whose lower bounds give
    the lower and upper bounds of ``C f``.

    Raises:
        TypeError, ValueError: ``threat`` is not an :class:`~trustlab.LpBall`, ``x`` does not match the
            network's input shape, or ``spec`` is malformed (see :func:`~trustlab.certify.spec.check_spec`).
        UnsupportedLayerError: from :func:`to_network`.
    """
    if not isinstance(threat, LpBall):
        raise TypeError(f"threat must be a trustlab.LpBall, got {type(threat).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    network = to_network(model, x)
    if tuple(x.shape[1:]) != network.in_shape or len(x) == 0:
        raise ValueError(f"x must have shape (N >= 1, *{network.in_shape}), got {tuple(x.shape)}")
    c = check_spec(spec, len(x), network.num_classes, x)
    return network, torch.cat([c, -c], dim=1)
