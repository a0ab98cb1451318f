"""Backdoor triggers as pure functions of an image batch.

Each trigger maps a batch ``x`` of shape (N, C, H, W) to a new batch of the same shape, dtype and device, inside
the box ``[lower, upper]``; the input is never mutated. Three kinds, registered in :data:`TRIGGERS`:

- ``patch`` (BadNets, Gu et al. 2017): a ``size x size`` checkerboard of ``upper`` and ``lower`` values (``upper``
  at the patch's top-left pixel) stamped on every channel, ``margin`` pixels from the corner named by
  ``location`` (default bottom-right: rows and columns ``[H - margin - size, H - margin)``).
- ``random``: the same placement with a fixed pattern of values uniform in ``[lower, upper]``, drawn from
  ``seed`` (the same seed and shape give the same pattern on every call and machine).
- ``blend`` (Chen et al. 2017): ``(1 - ratio) * x + ratio * k`` with ``k`` a fixed full-image uniform noise pattern
  drawn from ``seed``; a convex combination, so the box is kept.

Reference:
    Gu, Dolan-Gavitt & Garg 2017, "BadNets", arXiv:1708.06733. Chen, Liu, Li, Lu & Song 2017, "Targeted
    Backdoor Attacks on Deep Learning Systems Using Data Poisoning", arXiv:1712.05526 (blended injection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["TRIGGERS", "LOCATIONS", "Trigger", "patch_trigger", "random_pattern_trigger", "blend_trigger",
           "patch_window"]

LOCATIONS = ("bottom-right", "bottom-left", "top-right", "top-left")


def _check_batch(x: Tensor) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (N, C, H, W) batch, got shape {tuple(x.shape)} and {x.dtype}")


def patch_window(shape: tuple[int, ...], size: int, *, location: str = "bottom-right",
                 margin: int = 1) -> tuple[slice, slice]:
    """The rows and columns a ``size x size`` patch covers in an image of ``shape`` (..., H, W).

    Raises:
        ValueError: ``size < 1``, ``margin < 0``, an unknown location, or a patch that does not fit (sizes named).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be an int >= 0, got {margin!r}")
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {list(LOCATIONS)}, got {location!r}")
    h, w = shape[-2], shape[-1]
    if size + margin > h or size + margin > w:
        raise ValueError(f"a {size}x{size} trigger with margin {margin} does not fit in a {h}x{w} image")
    top = location.startswith("top")
    left = location.endswith("left")
    rows = slice(margin, margin + size) if top else slice(h - margin - size, h - margin)
    cols = slice(margin, margin + size) if left else slice(w - margin - size, w - margin)
    return rows, cols


def _stamp(x: Tensor, pattern: Tensor, rows: slice, cols: slice) -> Tensor:
    out = x.clone()
    out[:, :, rows, cols] = pattern.to(dtype=x.dtype, device=x.device)
    return out


def patch_trigger(x: Tensor, *, size: int = 3, location: str = "bottom-right", margin: int = 1,
                  lower: float = 0.0, upper: float = 1.0) -> Tensor:
    """BadNets' patch: a ``size x size`` checkerboard of ``upper``/``lower`` at ``location``.

    Args:
        x: the images, in ``[lower, upper]``.
        size: the patch's side in pixels.
        location: the corner it sits at, one of :data:`LOCATIONS`.
        margin: pixels between the patch and the image border.
        lower, upper: the input box; the patch's two values.

    Returns:
        A new batch; pixels outside the patch are byte-identical to ``x``.

    Shapes:
        x (N, C, H, W) -> (N, C, H, W).

    Raises:
        ValueError: not a floating 4-D batch, or a patch that does not fit (sizes named).

    Reference:
        Gu, Dolan-Gavitt & Garg 2017, arXiv:1708.06733, Sec. 3 (single-pixel and pattern backdoors).
    """
    _check_batch(x)
    rows, cols = patch_window(x.shape, size, location=location, margin=margin)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = torch.where((i + j) % 2 == 0, torch.tensor(float(upper)), torch.tensor(float(lower)))
    return _stamp(x, pattern, rows, cols)


def random_pattern_trigger(x: Tensor, *, size: int = 3, location: str = "bottom-right", margin: int = 1,
                           seed: int = 0, lower: float = 0.0, upper: float = 1.0) -> Tensor:
    """A fixed random ``size x size`` patch (values uniform in ``[lower, upper]``, one per channel and pixel).

    Args:
        x: the images.
        size, location, margin: as :func:`patch_trigger`.
        seed: the pattern's seed; the pattern is a pure function of ``(seed, C, size)``.
        lower, upper: the input box.

    Returns:
        A new batch with the pattern stamped at the window.

    Raises:
        ValueError: not a floating 4-D batch, or a patch that does not fit.

    Reference:
        Gu et al. 2017, arXiv:1708.06733 (pattern backdoor), with a seeded random pattern.
    """
    _check_batch(x)
    rows, cols = patch_window(x.shape, size, location=location, margin=margin)
    gen = torch.Generator().manual_seed(int(seed))
    pattern = lower + (upper - lower) * torch.rand(x.shape[1], size, size, generator=gen)
    return _stamp(x, pattern, rows, cols)


def blend_trigger(x: Tensor, *, ratio: float = 0.2, seed: int = 0, lower: float = 0.0,
                  upper: float = 1.0) -> Tensor:
    """Chen et al.'s blended injection: ``(1 - ratio) * x + ratio * k`` with a fixed noise image ``k``.

    Args:
        x: the images, in ``[lower, upper]``.
        ratio: the blend ratio alpha in ``(0, 1]``.
        seed: the seed of ``k`` (uniform in ``[lower, upper]``, one value per channel and pixel).
        lower, upper: the input box.

    Returns:
        A new batch, clamped to ``[lower, upper]`` against rounding.

    Raises:
        ValueError: not a floating 4-D batch, or ``ratio`` outside ``(0, 1]``.

    Reference:
        Chen et al. 2017, arXiv:1712.05526, Sec. 4.2 (blended injection strategy, Eq. 2).
    """
    _check_batch(x)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    gen = torch.Generator().manual_seed(int(seed))
    k = (lower + (upper - lower) * torch.rand(*x.shape[1:], generator=gen)).to(dtype=x.dtype, device=x.device)
    return ((1.0 - ratio) * x + ratio * k).clamp(lower, upper)


TRIGGERS: dict[str, Callable[..., Tensor]] = {
    "patch": patch_trigger,
    "random": random_pattern_trigger,
    "blend": blend_trigger,
}


@dataclass(frozen=True)
class Trigger:
    """A named trigger with its settings (the CLI's and the records' view of :data:`TRIGGERS`).

    Args:
        kind: ``"patch"``, ``"random"`` or ``"blend"``.
        size, location, margin: the patch's side, corner and distance from the border (patch, random).
        ratio: the blend ratio (blend).
        seed: the pattern's seed (random, blend).
        lower, upper: the input box.

    Raises:
        ValueError: an unknown kind.
    """

    kind: str = "patch"
    size: int = 3
    location: str = "bottom-right"
    margin: int = 1
    ratio: float = 0.2
    seed: int = 0
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TRIGGERS:
            raise ValueError(f"trigger kind must be one of {sorted(TRIGGERS)}, got {self.kind!r}")

    def __call__(self, x: Tensor) -> Tensor:
        box = {"lower": self.lower, "upper": self.upper}
        if self.kind == "blend":
            return blend_trigger(x, ratio=self.ratio, seed=self.seed, **box)
        window = {"size": self.size, "location": self.location, "margin": self.margin}
        if self.kind == "random":
            return random_pattern_trigger(x, seed=self.seed, **window, **box)
        return patch_trigger(x, **window, **box)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
