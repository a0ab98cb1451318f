"""FX-SMOOTH (reliability-tests.md Sec. 0): a halfspace classifier in d = 10 whose smoothed classifier and true
certified radius are known in closed form, and a spy base classifier that records every batch it sees."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


class Halfspace(nn.Module):
    """``f(x) = 0 if w.x + b > 0 else 1`` as logits ``(z, -z)``, float64.

    Under Gaussian noise ``g(x) = f(x)`` and ``P(f(x + e) = g(x)) = Phi(|w.x + b| / (sigma |w|))``; the true l_2
    radius of ``g`` at ``x`` is the distance to the hyperplane ``|w.x + b| / |w|``. With ``w`` along a coordinate
    axis the same holds for l_1 under any noise symmetric about 0 per coordinate.
    """

    def __init__(self, w: Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("w", w.double())
        self.b = b

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1).double() @ self.w + self.b
        return torch.stack([z, -z], 1)

    def point_at(self, distance: float) -> Tensor:
        """A point at signed distance ``distance`` from the hyperplane (class 0 side when positive)."""
        unit = self.w / self.w.norm()
        return (distance - self.b / self.w.norm()) * unit


@pytest.fixture()
def halfspace() -> Halfspace:
    g = torch.Generator().manual_seed(0)
    return Halfspace(torch.randn(10, generator=g, dtype=torch.float64), b=0.3)


@pytest.fixture()
def axis_halfspace() -> Halfspace:
    w = torch.zeros(10, dtype=torch.float64)
    w[3] = 2.0
    return Halfspace(w, b=-0.2)


class Spy:
    """A base classifier that records every batch and answers with ``answer(row_number) -> class``."""

    def __init__(self, num_classes: int, answer) -> None:
        self.num_classes, self.answer, self.batches, self.rows = num_classes, answer, [], 0

    def __call__(self, x: Tensor) -> Tensor:
        self.batches.append(x.clone())
        cls = torch.tensor([self.answer(self.rows + i) for i in range(len(x))])
        self.rows += len(x)
        return nn.functional.one_hot(cls, self.num_classes).to(x.dtype)


@pytest.fixture()
def spy_factory():
    return Spy
