"""Certified robustness: bound propagation (IBP, CROWN-IBP, CROWN, alpha-CROWN) and solvers (LP, exact MILP, SDP).

``certify(model, x, y, threat, method=...)`` returns a :class:`Certificate` per example; ``margin_bounds`` gives
the differentiable margin lower bounds for certified training; ``ibp_bounds``, ``crown_ibp_bounds``,
``crown_bounds`` and ``alpha_crown_bounds`` bound any specification ``C f`` and share one signature
``(network, x, threat, *, spec=None) -> Bounds``. Models are converted with :func:`to_network` (``torch.fx``) into
affine blocks and ReLUs; anything else raises :class:`~trustlab.errors.UnsupportedLayerError` listing every
offending op. The threat set is :class:`trustlab.LpBall` (l_inf or l_2, intersected with the input box).
"""

from __future__ import annotations

from trustlab.certify.alpha_crown import AlphaCROWN, alpha_crown_bounds
from trustlab.certify.backsub import crown_rows
from trustlab.certify.core import MARGIN_TOL, certify, margin_bounds
from trustlab.certify.crown import CROWN, crown_bounds
from trustlab.certify.crown_ibp import CROWNIBP, crown_ibp_bounds
from trustlab.certify.ibp import IBP, ibp_bounds
from trustlab.certify.lp import LP, lp_bounds
from trustlab.certify.milp import MILP, milp_bounds
from trustlab.certify.network import Network, to_network
from trustlab.certify.registry import METHODS, Method, build_method
from trustlab.certify.result import Bounds, Certificate, Verdict
from trustlab.certify.sdp import SDP, sdp_bounds
from trustlab.certify.spec import margin_spec
from trustlab.errors import UnsupportedLayerError

__all__ = [
    "certify",
    "margin_bounds",
    "ibp_bounds",
    "crown_ibp_bounds",
    "crown_bounds",
    "alpha_crown_bounds",
    "lp_bounds",
    "milp_bounds",
    "sdp_bounds",
    "IBP",
    "CROWNIBP",
    "CROWN",
    "AlphaCROWN",
    "LP",
    "MILP",
    "SDP",
    "METHODS",
    "Method",
    "build_method",
    "Network",
    "to_network",
    "margin_spec",
    "crown_rows",
    "Bounds",
    "Certificate",
    "Verdict",
    "MARGIN_TOL",
    "UnsupportedLayerError",
]
