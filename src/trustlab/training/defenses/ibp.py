"""IBP training (Gowal et al. 2018): the verified loss on interval bound propagation's margin lower bounds."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trustlab.certify import Network, margin_bounds
from trustlab.threat import LpBall
from trustlab.training.defenses.base import register_defense
from trustlab.training.defenses.certified import CertifiedDefense

__all__ = ["IBPTraining"]


@register_defense
@dataclass(frozen=True)
class IBPTraining(CertifiedDefense):
    """``min_theta E[kappa CE(f(x), y) + (1 - kappa) CE(-m_IBP(x; eps), y)]``, with ``kappa`` ramped from
    ``kappa_start = 1`` to ``kappa = 0.5`` while eps ramps up (Gowal et al.'s schedule; give the ramp with
    ``eps_warmup_epochs``). ``m_IBP`` propagates a box through the network and merges the margin specification into
    the last layer (:func:`trustlab.certify.ibp_bounds`), at about the cost of two forward passes. The per-epoch
    check certifies the validation images with IBP.

    Args:
        kappa, kappa_start, fast_init, fast_reg, fast_tol: see
            :class:`~trustlab.training.defenses.certified.CertifiedDefense`.

    Reference:
        Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, Mann & Kohli, "On the Effectiveness of
        Interval Bound Propagation for Training Verifiably Robust Models", 2018, arXiv:1810.12715, Sec. 3 (eqs.
        6-7, the loss of eq. 12 with ``kappa``) and Sec. 4 (the eps and kappa ramps).
    """

    name = "ibp"

    def margin_lower(self, network: Network, x: Tensor, y: Tensor, threat: LpBall, *, ramp: float) -> Tensor:
        return margin_bounds(network, x, y, threat, method="ibp")
