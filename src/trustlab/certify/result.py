"""What certifiers return: bounds on specifications, and a certificate per example.

Abstention and "unknown" are values, not exceptions: a bound method that cannot prove robustness says UNKNOWN;
FALSIFIED always comes with a counterexample inside the threat set that the plain model misclassifies.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Bounds", "Verdict", "Certificate"]


@dataclass(frozen=True, eq=False)
class Bounds:
    """Lower and upper bounds of ``C f(x')`` over the threat set, per example and specification row.

    Shapes:
        lower, upper (N, S): S = K logits when no specification is given, else the rows of ``C``.
    """

    lower: Tensor
    upper: Tensor

    @classmethod
    def from_stacked(cls, lb: Tensor) -> Bounds:
        """Bounds from the lower bounds of the stacked rows ``[C; -C]``: ``lower = lb[:, :S]``,
        ``upper = -lb[:, S:]`` (every bound method computes lower bounds of both signs this way)."""
        s = lb.shape[1] // 2
        return cls(lb[:, :s], -lb[:, s:])


class Verdict(str, enum.Enum):
    """The outcome for one example: proven robust, proven not robust (with a counterexample), or neither."""

    CERTIFIED = "certified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Certificate:
    """The result of certifying one example.

    Args:
        index: position of the example in the batch given to ``certify``.
        label: its true label ``y``.
        verdict: CERTIFIED if every margin lower bound is ``> margin_tol``; FALSIFIED if the plain model
            misclassifies a point of the threat set (for bound methods: the clean input itself); else UNKNOWN.
        classes: the other classes ``j != y``, ascending.
        margin_lower: a lower bound of ``min_{x' in S(x)} f_y(x') - f_j(x')`` for each ``j`` in ``classes``.
        method: the method's registry name.
        settings: the method's hyperparameters and the threat, flat and JSON-safe.
        seconds: the batch's wall time divided among its examples.
        counterexample: for FALSIFIED, a point of the threat set that the model misclassifies; else ``None``.
        solver: for the solver methods (LP, MILP, SDP), per class in ``classes``: ``status`` (``optimal``,
            ``limit``, ...), ``seconds``, and for the MILP ``upper`` (the best feasible margin found); else None.

    Guarantee:
        CERTIFIED means that, up to floating-point rounding in the bound computation (no certificate is given
        unless the bound exceeds ``settings["margin_tol"]``), ``argmax_k f_k(x') = y`` for every ``x'`` in
        ``{||x' - x||_p <= eps} ∩ [lower, upper]^d``.
    """

    index: int
    label: int
    verdict: Verdict
    classes: tuple[int, ...]
    margin_lower: tuple[float, ...]
    method: str
    settings: dict[str, Any]
    seconds: float
    counterexample: Tensor | None = field(default=None, repr=False)
    solver: dict[str, Any] | None = None

    @property
    def certified(self) -> bool:
        """Whether the verdict is CERTIFIED."""
        return self.verdict is Verdict.CERTIFIED

    @property
    def min_margin_lower(self) -> float:
        """The smallest margin lower bound (over ``j != y``); ``> margin_tol`` exactly when certified."""
        return min(self.margin_lower)

    def to_record(self) -> dict[str, Any]:
        """One flat JSON-safe row for ``records.jsonl`` (the counterexample is left out; ``-inf`` becomes None)."""
        return {
            "index": self.index,
            "label": self.label,
            "verdict": self.verdict.value,
            "method": self.method,
            **self.settings,
            "min_margin_lower": _json_float(self.min_margin_lower),
            "margin_lower": {str(j): _json_float(v) for j, v in zip(self.classes, self.margin_lower)},
            "seconds": self.seconds,
            **({"solver": self.solver} if self.solver is not None else {}),
        }


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None
