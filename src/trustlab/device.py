"""Where computation runs: ``--device {auto,cpu,cuda}`` resolved once, and what a run records about it."""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["DEVICES", "check_device", "resolve_device", "runtime_info"]

DEVICES = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:\d+")


def check_device(name: object) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, else raise naming it."""
    if not isinstance(name, str) or not (name in DEVICES or _CUDA_INDEX.fullmatch(name)):
        raise ValueError(f"device must be one of {list(DEVICES)} (or cuda:N), got {name!r}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; asking for ``cuda`` where there is none is an error.

    Raises:
        ValueError: an unknown name, or ``cuda`` on a machine where torch sees no CUDA device.
    """
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device {name!r} asked for, but torch {torch.__version__} ({build}) sees no CUDA "
                             "device on this machine; use --device cpu or auto")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)


def runtime_info(device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """What config.json records about where and how a run computed."""
    info: dict[str, Any] = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info
