"""The exceptions trustlab raises on purpose.

Bad values get a plain ``ValueError``/``TypeError`` naming the value; these classes mark failures that a
caller may want to catch as a group.
"""

from __future__ import annotations

__all__ = [
    "TrustlabError",
    "BackendError",
    "CheckpointError",
    "DataError",
    "MissingDependencyError",
    "NumericalError",
    "RunInUseError",
    "UnsupportedLayerError",
]


class TrustlabError(Exception):
    """Base class of every error trustlab raises on purpose."""


class BackendError(TrustlabError, ConnectionError):
    """An LLM endpoint is unreachable, times out after its retries, or answers with an error or malformed JSON."""


class CheckpointError(TrustlabError):
    """A checkpoint is missing, incomplete, corrupt, tampered with, or for another architecture."""


class DataError(TrustlabError):
    """A dataset file is missing, truncated, corrupt, or fails its checksum."""


class MissingDependencyError(TrustlabError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class NumericalError(TrustlabError, ArithmeticError):
    """NaN or Inf appeared in logits or a loss (the message gives the step)."""


class UnsupportedLayerError(TrustlabError, ValueError, TypeError):
    """A certifier met layers it cannot bound soundly; ``ops`` names every one of them.

    A ``ValueError`` (the model is a bad value for the certifier) and, as before, a ``TypeError``.
    """

    def __init__(self, message: str, ops: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ops = tuple(ops)


class RunInUseError(TrustlabError):
    """Another process holds the run folder's lock (the message names its PID)."""
