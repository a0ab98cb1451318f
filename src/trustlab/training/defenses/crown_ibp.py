"""CROWN-IBP training (Zhang et al. 2020): the verified loss on a mix of CROWN-IBP and IBP margin bounds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from trustlab.certify import Network, margin_bounds
from trustlab.threat import LpBall
from trustlab.training.defenses.base import register_defense
from trustlab.training.defenses.certified import CertifiedDefense, check_unit, linear_ramp

__all__ = ["CROWNIBPTraining"]


@register_defense
@dataclass(frozen=True)
class CROWNIBPTraining(CertifiedDefense):
    """``min_theta E[kappa CE(f(x), y) + (1 - kappa) CE(-[(1 - beta) m_IBP + beta m_CROWN-IBP], y)]``.

    ``m_CROWN-IBP`` bounds the margins by one CROWN back-substitution from the output with IBP's intermediate
    bounds: tighter than IBP on a network at initialization, where IBP is loose, at the cost of about ``2 (K - 1)``
    backward passes per example. Both are lower bounds, so is their convex combination. ``beta`` moves linearly
    from ``beta_start = 1`` to ``beta = 0`` while eps ramps up, so training starts on the tight bound and ends on
    IBP's (which the paper finds generalizes better at the final eps), and ``kappa`` from 1 to 0. At ``beta = 0``
    the CROWN-IBP bound is not computed (the loss is IBP training's), at ``beta = 1`` IBP's is not. The per-epoch
    check counts an image verified if IBP or CROWN-IBP certifies it.

    Args:
        beta: the CROWN-IBP bound's weight at the end of the ramp and after it, in ``[0, 1]``.
        beta_start: its weight at the start of the ramp, in ``[0, 1]``.
        kappa, kappa_start, fast_init, fast_reg, fast_tol: see
            :class:`~trustlab.training.defenses.certified.CertifiedDefense` (here ``kappa`` defaults to 0).

    Reference:
        Zhang, Chen, Xiao, Gowal, Stanforth, Li, Boning & Hsieh, "Towards Stable and Efficient Training of
        Verifiably Robust Neural Networks", ICLR 2020, arXiv:1906.06316, Sec. 3 (eq. 9: the mixed bound in the
        loss), Sec. 4 (beta from 1 to 0 and kappa from 1 or 0 to 0 during the eps ramp).
    """

    name = "crown-ibp"
    kappa: float = 0.0
    beta: float = 0.0
    beta_start: float = 1.0

    check_methods: ClassVar[tuple[str, ...]] = ("ibp", "crown-ibp")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("beta", "beta_start"):
            object.__setattr__(self, name, check_unit(getattr(self, name), name))

    def beta_at(self, ramp: float) -> float:
        """The CROWN-IBP bound's weight at ``ramp = eps_t / eps``."""
        return linear_ramp(self.beta_start, self.beta, ramp)

    def margin_lower(self, network: Network, x: Tensor, y: Tensor, threat: LpBall, *, ramp: float) -> Tensor:
        beta = self.beta_at(ramp)
        lower = 0.0
        if beta < 1:
            lower = (1 - beta) * margin_bounds(network, x, y, threat, method="ibp")
        if beta > 0:
            lower = lower + beta * margin_bounds(network, x, y, threat, method="crown-ibp")
        return lower
