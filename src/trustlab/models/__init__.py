"""Architectures (MLP, small CNNs, pre-activation ResNet-18) behind a closed name registry.

Every builder takes ``in_shape=(C, H, W)`` and ``num_classes=K`` and returns a plain module mapping inputs in
``[0, 1]`` to ``(N, K)`` logits, an ``nn.Sequential`` wherever the architecture allows (certifiers walk it).
Checkpoints of these models are saved and loaded by :mod:`trustlab.checkpoint`.
"""

from __future__ import annotations

from trustlab.models.cnn_large import cnn_large
from trustlab.models.cnn_small import cnn_small
from trustlab.models.cnn_small_quantized import cnn_small_quantized
from trustlab.models.mlp import mlp
from trustlab.models.preact_resnet import PreActBlock, preact_resnet18
from trustlab.models.preprocess import InputQuantization
from trustlab.models.registry import MODELS, build_model, model_names

__all__ = [
    "MODELS",
    "build_model",
    "model_names",
    "mlp",
    "cnn_small",
    "cnn_small_quantized",
    "InputQuantization",
    "cnn_large",
    "preact_resnet18",
    "PreActBlock",
]
