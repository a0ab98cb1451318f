"""trustlab: trustworthy machine learning through optimization.

Train a model, attack it, defend it, certify it, poison it, and read the answer as tables, plots and a report.
Importing trustlab has no side effects.
"""

from __future__ import annotations

from trustlab.errors import (
    CheckpointError,
    DataError,
    MissingDependencyError,
    NumericalError,
    TrustlabError,
    UnsupportedLayerError,
)
from trustlab.threat import LpBall

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "LpBall",
    "TrustlabError",
    "CheckpointError",
    "DataError",
    "MissingDependencyError",
    "NumericalError",
    "UnsupportedLayerError",
]
