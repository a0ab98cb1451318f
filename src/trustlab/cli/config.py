"""Options from a TOML file (``--config``) merged under command-line flags.

Keys are the dataclass field names (dashes or underscores). Unknown keys are an error listing the valid ones;
values are data, never code: a config can only name registry entries.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_toml", "merge_options"]


def load_toml(path: str | Path, *, section: str | None = None) -> dict[str, Any]:
    """Read a TOML file; with ``section``, use that table if present (e.g. ``[train]``), else the top level."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid config {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"invalid config {path}: {e}") from None
    except RecursionError:
        raise ValueError(f"invalid config {path}: values nested too deeply") from None
    if section is not None and isinstance(data.get(section), dict):
        stray = sorted(k for k in data if k != section)
        if stray:  # silently ignoring them would train something other than what the file says
            raise ValueError(f"{path}: keys {stray} lie outside the [{section}] table; move them into it")
        data = data[section]
    return {k.replace("-", "_"): v for k, v in data.items()}


def merge_options(defaults_from_file: dict[str, Any], flags: dict[str, Any], valid: list[str]) -> dict[str, Any]:
    """File values, overridden by flags that were given (not ``None``); unknown keys raise ``ValueError``."""
    unknown = sorted(set(defaults_from_file) - set(valid))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {valid}")
    merged = dict(defaults_from_file)
    merged.update({k: v for k, v in flags.items() if v is not None and k in valid})
    return merged
