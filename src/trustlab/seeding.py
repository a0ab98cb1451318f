"""Explicit random streams: every random draw in trustlab comes from a generator derived here, never the global RNG."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["derive_seed", "derive_generator"]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by ``(seed, *keys)`` (numpy ``SeedSequence``: independent streams)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def derive_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` for the stream ``(seed, *keys)``; e.g. ``(seed, epoch, 1)`` for epoch's attack starts."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
