"""How a model's forward passes run: precision (bf16 autocast), memory format (channels-last), ``torch.compile``.

One seam between these settings and the code that runs a model: :func:`prepare` returns a module that training
and attacks call like the model itself. Only the model's forward pass runs under autocast, and its logits come
back in float32, so every loss is computed in float32 and an attack's input, perturbation, step and projection
never leave float32: the first layer casts its own copy of the input to bfloat16, and the input gradient flows
back through that cast as float32. With the defaults (fp32, contiguous, eager) :func:`prepare` returns the model
itself, so nothing changes.

What a setting changes, and so what a run records as its identity: ``precision`` changes the numbers (bf16 keeps
8 bits of mantissa), so a bf16 run is another run (:meth:`Compute.identity`); ``channels_last`` and ``compile``
change only the order of floating-point operations, like the device, and are recorded but not part of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PRECISIONS", "Compute", "check_compute", "prepare", "Prepared"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")  # fp32: plain float32; bf16: the forward pass under torch.autocast(bfloat16)
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Compute:
    """How the forward passes of a run or an evaluation are computed.

    Args:
        precision: ``"fp32"`` or ``"bf16"`` (the model's forward under bfloat16 autocast, float32 logits).
        channels_last: convert the model's 4-D weights and every 4-D input to the channels-last memory format
            (NHWC), which cuDNN's and oneDNN's convolution kernels prefer, above all under bf16.
        compile: run the model through ``torch.compile`` (TorchInductor; the first passes compile, and a new
            input shape or a train/eval switch can compile again).

    Raises:
        ValueError: an unknown precision, or a flag that is not a bool.
    """

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def is_default(self) -> bool:
        """fp32, contiguous, eager: :func:`prepare` returns the model itself."""
        return self == Compute()

    def to_dict(self) -> dict[str, Any]:
        """All three settings, for config.json."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change results, for a run's identity: ``{"precision": "bf16"}``, or nothing for
        fp32 (so identities from before these settings existed stay the same)."""
        return {} if self.precision == "fp32" else {"precision": self.precision}


def check_compute(compute: Compute, device: torch.device) -> Compute:
    """``compute`` if ``device`` can run it, else a ``ValueError`` that says what is missing.

    bf16 needs native bfloat16 on a CUDA device (compute capability 8.0, Ampere, or later); on the CPU autocast
    supports it everywhere (emulated, so slow, where the CPU lacks AVX512-BF16 or AMX). ``compile`` needs
    TorchDynamo on this Python, and TorchInductor's backend: Triton on CUDA, a C++ compiler on the CPU.

    Raises:
        TypeError: ``compute`` is not a :class:`Compute`.
        ValueError: a setting the device or the installation cannot run.
    """
    if not isinstance(compute, Compute):
        raise TypeError(f"compute must be a trustlab.compute.Compute, got {type(compute).__name__}")
    device = torch.device(device)
    if compute.precision == "bf16" and device.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            major, minor = torch.cuda.get_device_capability(device)
            raise ValueError(f"precision 'bf16' asked for, but {torch.cuda.get_device_name(device)} (compute "
                             f"capability {major}.{minor}) has no native bfloat16 (it needs 8.0 or later); use "
                             "--precision fp32")
    if compute.precision == "bf16" and device.type not in ("cuda", "cpu"):
        raise ValueError(f"precision 'bf16' is supported on cuda and cpu devices, not on {device.type!r}")
    if compute.compile:
        _check_compile(device)
    return compute


def _check_compile(device: torch.device) -> None:
    import torch._dynamo  # the public torch.compile checks this itself, with a less helpful message

    if not torch._dynamo.is_dynamo_supported():
        raise ValueError(f"--compile asked for, but torch.compile does not support Python "
                         f"{sys.version_info.major}.{sys.version_info.minor} in torch {torch.__version__}")
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            raise ValueError("--compile on CUDA needs Triton, which this installation lacks (it ships with "
                             "torch's CUDA wheels; pip install triton)")
    elif device.type == "cpu":
        cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(cxx) is None:
            raise ValueError(f"--compile on the CPU needs a C++ compiler for TorchInductor, and {cxx!r} (the "
                             "compiler $CXX names, else the platform's default) is not on PATH")


class Prepared(nn.Module):
    """``model`` with channels-last inputs and/or its forward pass under autocast, returning float32 logits.

    The parameters are ``model``'s own (an optimizer over ``model.parameters()`` trains them, and checkpoints
    save ``model``); train and eval mode pass through to it.

    Shapes:
        ``(N, *D) -> (N, K)`` float32, as ``model``.
    """

    def __init__(self, model: nn.Module, *, autocast: torch.dtype | None, device_type: str,
                 channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.autocast, self.device_type, self.channels_last = autocast, device_type, channels_last
        self.training = model.training  # the wrapper follows the model's mode, so it adds no mode warning

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a float32 copy; x itself is not changed
        if self.autocast is None:
            return self.model(x)
        with torch.autocast(self.device_type, dtype=self.autocast):
            logits = self.model(x)
        return logits.float()  # every loss, and with it every attack objective and gradient, in float32


def prepare(model: nn.Module, compute: Compute, device: torch.device | str) -> nn.Module:
    """``model`` as training and attacks should call it under ``compute`` on ``device``.

    With the default :class:`Compute` this is ``model`` itself. Otherwise a :class:`Prepared` wrapper (bf16,
    channels-last), compiled with ``torch.compile`` if asked. ``channels_last`` converts ``model``'s 4-D weights
    to the channels-last layout in place (as ``model.to(device)`` moves them: the values are unchanged, and
    checkpoints are saved contiguous).

    Raises:
        ValueError: ``compute`` asks for what ``device`` cannot run (:func:`check_compute`).
    """
    device = torch.device(device)
    check_compute(compute, device)
    if compute.is_default:
        return model
    if compute.channels_last:
        model.to(memory_format=torch.channels_last)
    run: nn.Module = model
    if compute.precision != "fp32" or compute.channels_last:
        run = Prepared(model, autocast=_AUTOCAST[compute.precision], device_type=device.type,
                       channels_last=compute.channels_last)
    if compute.compile:
        log.info("compiling the model with torch.compile (the first forward passes are slow)")
        run = torch.compile(run)
    return run
