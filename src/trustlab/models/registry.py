"""The closed registry of architectures: configs name a model, they never name code.

Reference:
    reliability-tests.md SEC-09 (resolve names through a closed registry, never dotted import paths; cf.
    Hydra ``_target_`` advisories CVE-2025-23304, GHSA-37p2-j732-x8pj).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trustlab.models.cnn_large import cnn_large
from trustlab.models.cnn_small import cnn_small
from trustlab.models.cnn_small_quantized import cnn_small_quantized
from trustlab.models.mlp import mlp
from trustlab.models.mlp_small import mlp_1x50, mlp_1x100, mlp_2x100, mlp_3x100
from trustlab.models.preact_resnet import preact_resnet18

__all__ = ["MODELS", "build_model", "model_names"]

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": mlp,
    "mlp-1x50": mlp_1x50,
    "mlp-1x100": mlp_1x100,
    "mlp-2x100": mlp_2x100,
    "mlp-3x100": mlp_3x100,
    "cnn-small": cnn_small,
    "cnn-small-quantized": cnn_small_quantized,
    "cnn-large": cnn_large,
    "preact-resnet18": preact_resnet18,
}
"""Architecture name -> builder taking keyword-only ``in_shape`` and ``num_classes``."""


def model_names() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(MODELS)


def build_model(
    name: str, *, in_shape: tuple[int, int, int], num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build the registered architecture ``name`` for inputs of shape ``in_shape`` and ``num_classes`` logits.

    Args:
        name: a key of :data:`MODELS`, e.g. ``"cnn-small"``.
        in_shape: ``(C, H, W)`` of one input; inputs are expected in ``[0, 1]``.
        num_classes: number of logits ``K``.
        seed: if given, parameters are initialised from a CPU generator seeded with it and the global RNG is
            left exactly as it was; if ``None``, initialisation draws from the global RNG, as PyTorch modules do.

    Returns:
        A freshly initialised ``nn.Module`` (in training mode) mapping ``(N, C, H, W)`` to ``(N, K)`` logits.

    Shapes:
        ``(N, C, H, W) -> (N, K)``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the valid names), or the shape is too
            small for the architecture.
        TypeError: if ``name``, ``in_shape``, ``num_classes`` or ``seed`` has the wrong type.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    builder = MODELS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()}")
    if seed is None:
        return builder(in_shape=in_shape, num_classes=num_classes)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    # Module initialisers draw from the default CPU generator; fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return builder(in_shape=in_shape, num_classes=num_classes)
