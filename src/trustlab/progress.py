"""Progress bars on a terminal; on a file or a pipe, nothing per batch (the callers log one line per epoch or
stage instead), so a redirected log never fills with carriage-return frames."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["progress_bar", "interactive"]

T = TypeVar("T")


def interactive() -> bool:
    """Whether stderr (where bars and logs go) is a terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(iterable: Iterable[T], *, desc: str, enabled: bool = True, unit: str = "batch", **kwargs) -> tqdm:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal; otherwise a silent one."""
    return tqdm(iterable, desc=desc, unit=unit, leave=False, disable=not (enabled and interactive()), **kwargs)
