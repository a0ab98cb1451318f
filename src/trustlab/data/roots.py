"""Data roots: the directories searched for dataset files, in order."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_roots", "cache_dir", "DATA_ENV"]

DATA_ENV = "TRUSTLAB_DATA"


def cache_dir() -> Path:
    """The user cache directory: ``$XDG_CACHE_HOME/trustlab``, else ``~/.cache/trustlab``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache").expanduser() / "trustlab"


def resolve_roots(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Return the data roots to search, most specific first.

    The explicit root comes first: ``root`` if given, else ``$TRUSTLAB_DATA`` if set. The user cache directory
    (:func:`cache_dir`) always comes last. Downloads go into the first root.

    Args:
        root: An explicit data root, or ``None``.

    Returns:
        One or two distinct directories (they need not exist).
    """
    roots: list[Path] = []
    explicit = root if root is not None else os.environ.get(DATA_ENV) or None
    if explicit is not None:
        roots.append(Path(explicit).expanduser())
    cache = cache_dir()
    if cache not in roots:
        roots.append(cache)
    return roots
