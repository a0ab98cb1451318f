"""Argument parsing shared by the subcommands: one-line errors, no abbreviations, flags derived from configs."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from typing import Any, NoReturn

__all__ = ["Parser", "add_global_options", "add_dataclass_flag", "flag_type", "given", "shown"]


class Parser(argparse.ArgumentParser):
    """``argparse`` with whole option names only and a one-line error (exit 2) instead of usage plus error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--debug`` and ``--quiet``, valid before and after the subcommand. On a subcommand their default is
    suppressed, so a value given before it is not reset."""
    default = argparse.SUPPRESS if suppress else False
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", default=default,
                        help="no progress bars or info logs (errors and warnings only)")


def flag_type(annotation: str) -> type:
    """The Python type of a dataclass field annotation written as a string (``"float | None"`` -> float)."""
    parts = [a.strip() for a in str(annotation).split("|") if a.strip() != "None"]
    return {"bool": bool, "int": int, "float": float}.get(parts[0] if parts else "", str)


def add_dataclass_flag(parser: argparse.ArgumentParser, field: dataclasses.Field, *, flag: str | None = None,
                       dest: str | None = None, choices: Iterable[str] | None = None, help: str | None = None) -> None:
    """A flag ``--<field-name>`` (or ``flag``) of the field's type; booleans get ``--x/--no-x``. Defaults are
    ``None`` so that only flags actually given override a recipe."""
    kind = flag_type(str(field.type))
    flag = flag or "--" + field.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": dest or field.name, "default": None, "help": help}
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if choices is not None:
        kwargs["choices"] = list(choices)
    parser.add_argument(flag, type=kind, **kwargs)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags among ``names`` that were given on the command line."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def shown(value: object) -> str:
    """``value`` as text safe to print on a terminal: control characters (an escape sequence in a run path, say)
    are written as Python escapes (``\\x1b``), printable text, non-ASCII included, as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
