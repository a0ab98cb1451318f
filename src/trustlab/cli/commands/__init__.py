"""The subcommands of ``trustlab``. Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; adding a subcommand is one new module plus its name in :data:`COMMAND_MODULES`."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["COMMAND_MODULES", "commands"]

COMMAND_MODULES = (
    "trustlab.cli.commands.train",
    "trustlab.cli.commands.attack",
    "trustlab.cli.commands.verify",
    "trustlab.cli.commands.smooth",
    "trustlab.cli.commands.poison",
    "trustlab.cli.commands.llm",
    "trustlab.cli.commands.matrix",
    "trustlab.cli.commands.report",
    "trustlab.cli.commands.optim",
    "trustlab.cli.commands.demo",
)


def commands() -> list[ModuleType]:
    """The command modules, imported (each imports its heavy dependencies only when it runs)."""
    return [importlib.import_module(name) for name in COMMAND_MODULES]  # sec03-allow: names from the fixed tuple
