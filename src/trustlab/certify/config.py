"""The configuration shell shared by the bound methods: a frozen dataclass of hyperparameters, no model.

A method's configuration names its function and holds its keyword settings; ``bounds`` calls the function with
them, and ``to_dict`` writes them for run records. ``certify`` and certified training take a configuration or its
registry name (:data:`trustlab.certify.METHODS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from torch import Tensor, nn

from trustlab.certify.network import Network
from trustlab.certify.result import Bounds
from trustlab.threat import LpBall

__all__ = ["BoundMethod"]


@dataclass(frozen=True)
class BoundMethod:
    """Base of the method configurations: subclasses set ``name`` and ``function`` and declare their settings
    as dataclass fields (keyword arguments of ``function``)."""

    name: ClassVar[str]
    function: ClassVar[Callable[..., Bounds]]

    def settings(self) -> dict[str, Any]:
        """The hyperparameters, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def bounds(self, network: Network | nn.Module, x: Tensor, threat: LpBall, *,
               spec: Tensor | None = None) -> Bounds:
        """Bounds on ``C f(x')`` over the threat set: the method's function with these settings."""
        return type(self).function(network, x, threat, spec=spec, **self.settings())

    def to_dict(self) -> dict[str, Any]:
        """The method and its settings, flat, for run records."""
        return {"method": self.name, **self.settings()}
