"""Bound methods by name, for ``certify``, the CLI, config files and the contract tests."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Union

from trustlab.certify.alpha_crown import AlphaCROWN
from trustlab.certify.config import BoundMethod
from trustlab.certify.crown import CROWN
from trustlab.certify.crown_ibp import CROWNIBP
from trustlab.certify.ibp import IBP
from trustlab.certify.lp import LP
from trustlab.certify.milp import MILP
from trustlab.certify.sdp import SDP

__all__ = ["METHODS", "Method", "build_method", "resolve_method"]

Method = Union[IBP, CROWNIBP, CROWN, AlphaCROWN, LP, MILP, SDP]

METHODS: dict[str, type[Method]] = {"ibp": IBP, "crown-ibp": CROWNIBP, "crown": CROWN, "alpha-crown": AlphaCROWN,
                                    "lp": LP, "milp": MILP, "sdp": SDP}


def build_method(name: str, **params: Any) -> Method:
    """The configuration ``METHODS[name](**params)``, validated.

    Raises:
        ValueError: an unknown ``name`` or parameter (the message lists the valid ones), or an invalid value.
        TypeError: a value of the wrong type.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown certification method {name!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {name!r}; valid: {valid}")
    return cls(**params)


def resolve_method(method: str | Method) -> Method:
    """A registry name (default settings) or a configuration instance, as a configuration."""
    if isinstance(method, BoundMethod):
        return method  # type: ignore[return-value]
    if isinstance(method, str):
        return build_method(method)
    raise TypeError(f"method must be one of {sorted(METHODS)} or a method configuration, got {type(method).__name__}")
