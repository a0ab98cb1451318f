"""Input preprocessing layers that are part of a model: what a defense puts in front of a classifier.

:class:`InputQuantization` is the textbook gradient-masking "defense" (bit-depth reduction, Xu et al. 2018;
thermometer encoding, Buckman et al. 2018): it rounds every pixel to a few grey levels, so the input gradient
of the whole model is zero almost everywhere and gradient attacks stall, while the robustness is barely there
(Athalye, Carlini & Wagner 2018 broke it with BPDA). It is registered (``cnn-small-quantized``) so that an
evaluation can be shown to see through it. A layer whose backward pass may be replaced by the identity says so
with ``straight_through = True``; :func:`trustlab.attacks.wrappers.bpda_split` reads it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from trustlab.validation import check_positive_int

__all__ = ["InputQuantization"]


class InputQuantization(nn.Module):
    """``x -> round(x * (levels - 1)) / (levels - 1)``: each input in ``[0, 1]`` rounded to the nearest of
    ``levels`` evenly spaced grey levels (``levels = 5`` is ``round(4x) / 4``, reliability-tests.md FX-MASK(a)).

    Its output is close to its input (within half a level), so BPDA with the identity is a good approximation of
    its gradient (Athalye et al. 2018, Sec. 4.1).

    Args:
        levels: grey levels, ``>= 2``.

    Shapes:
        ``(N, *D) -> (N, *D)``.

    Reference:
        Xu, Evans & Qi, "Feature squeezing", NDSS 2018, arXiv:1704.01155 (bit-depth reduction);
        Athalye, Carlini & Wagner, ICML 2018, arXiv:1802.00420.
    """

    straight_through: ClassVar[bool] = True  # BPDA may treat this layer as x -> x in the backward pass

    def __init__(self, levels: int = 5) -> None:
        super().__init__()
        self.levels = check_positive_int(levels, "levels", minimum=2)

    def forward(self, x: Tensor) -> Tensor:
        steps = self.levels - 1
        return torch.round(x * steps) / steps

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
