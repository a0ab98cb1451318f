"""Markdown tables from flat rows, with every cell escaped (SEC-12).

Run names, class names and config strings come from users and files, so a cell never carries Markdown or HTML
syntax through: ANSI escape sequences and other control characters are removed, newlines become spaces, and
the characters that start links, emphasis, code, HTML tags or table cells are backslash-escaped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = [
    "markdown_table",
    "matrix_markdown",
    "matrix_spec",
    "format_cell",
    "format_rows",
    "escape_markdown",
    "sanitize_text",
    "strip_ansi",
    "MATRIX_PERCENT",
]

# CSI / OSC / two-character escape sequences, then any remaining C0/C1 control character
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every C0/C1 control but \t and \n
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&$])")  # links, code, emphasis, HTML, headings, cells, math
MATRIX_PERCENT = frozenset({"clean", "fgsm", "pgd", "linear", "worst"})
_MATRIX_ORDER = ("run", "train", "eps", "p", "clean", "fgsm", "pgd", "linear", "worst", "n")


def strip_ansi(value: Any) -> str:
    """``str(value)`` without ANSI escape sequences and control characters other than newline and tab."""
    return _CONTROL.sub("", _ANSI.sub("", str(value)).replace("\r\n", "\n").replace("\r", "\n"))


def sanitize_text(value: Any) -> str:
    """``str(value)`` without ANSI escape sequences or control characters; newlines and tabs become spaces.

    Use it for terminal output too: what it returns cannot move the cursor, recolour or retitle a terminal.
    """
    return strip_ansi(value).replace("\n", " ").replace("\t", " ")


def escape_markdown(value: Any) -> str:
    """Make ``value`` literal text in Markdown (and in a Markdown table cell).

    Control characters are dropped (see :func:`sanitize_text`) and Markdown/HTML metacharacters are
    backslash-escaped, so ``[x](javascript:...)`` stays text and ``<script>`` is never raw HTML.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", sanitize_text(value))


def format_cell(value: Any, *, floatfmt: str = ".1f", percent: bool = False) -> str:
    """Format one value as unescaped text: None and NaN as ``—``, booleans as yes/no, floats with ``floatfmt``.

    With ``percent``, a float is multiplied by 100 and suffixed with ``%``; lists are joined with ``, ``.
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not percent:
        return str(value)
    if isinstance(value, (float, int)) or hasattr(value, "dtype"):
        v = float(value)
        if math.isnan(v):
            return "—"
        if percent:
            return f"{100 * v:{floatfmt}}%"
        return f"{v:{floatfmt}}" if math.isfinite(v) else str(v)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_cell(v, floatfmt=floatfmt, percent=percent) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" if isinstance(v, bool) else f"{k}={format_cell(v, floatfmt='g')}"
                         for k, v in value.items())
    return str(value)


def format_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    floatfmt: str | Mapping[str, str] = ".1f",
    percent: bool | Collection[str] = True,
) -> list[list[str]]:
    """The cells of ``rows`` under ``columns`` as unescaped text (see :func:`format_cell`); Markdown and HTML
    tables both use it, so they show the same strings.

    Args:
        rows: flat mappings; a missing key shows as ``—``.
        columns: the keys to show, in order.
        floatfmt: format spec of floats, or one per column (columns not named use ``".1f"``).
        percent: show floats as percentages: True for every column, or the names of the columns to convert.
    """
    out = []
    for row in rows:
        cells = []
        for c in columns:
            fmt = floatfmt.get(c, ".1f") if isinstance(floatfmt, Mapping) else floatfmt
            pct = percent if isinstance(percent, bool) else c in percent
            cells.append(format_cell(row.get(c), floatfmt=fmt, percent=pct))
        out.append(cells)
    return out


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    floatfmt: str | Mapping[str, str] = ".1f",
    percent: bool | Collection[str] = True,
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``.

    Args:
        rows: flat mappings; a missing key shows as ``—``.
        columns: the keys to show, in order.
        headers: display names of columns (default: the keys).
        floatfmt: format spec of floats, or one per column (columns not named use ``".1f"``).
        percent: show floats as percentages: True for every column, or the names of the columns to convert.

    Returns:
        The table, ending with a newline; every header and cell is escaped with :func:`escape_markdown`.

    Raises:
        ValueError: ``columns`` is empty.
    """
    if len(columns) == 0:
        raise ValueError("columns must name at least one column, got none")
    headers = headers or {}
    lines = ["| " + " | ".join(escape_markdown(headers.get(c, c)) for c in columns) + " |",
             "|" + "|".join(" --- " for _ in columns) + "|"]
    for cells in format_rows(rows, columns, floatfmt=floatfmt, percent=percent):
        lines.append("| " + " | ".join(escape_markdown(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_spec(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How :func:`~trustlab.reports.metrics.robustness_matrix` rows are shown: ``columns`` in a fixed order,
    ``floatfmt`` and ``percent`` (accuracies in percent), as keyword arguments of the table functions.
    """
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "notes"]
    head, tail = _MATRIX_ORDER[:-2], _MATRIX_ORDER[-2:]  # other kinds' columns go before worst and n
    columns = ([k for k in head if k in keys] + [k for k in keys if k not in _MATRIX_ORDER]
               + [k for k in tail if k in keys])
    percent = {c for c in columns if c in MATRIX_PERCENT or c not in _MATRIX_ORDER}
    return {"columns": columns, "floatfmt": {"eps": "g"}, "percent": percent}


def matrix_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The robustness matrix as a Markdown table, accuracies in percent, followed by its notes as a list."""
    if not rows:
        return "No runs.\n"
    text = markdown_table(rows, **matrix_spec(rows))
    notes = [f"- {escape_markdown(r['run'])}: {escape_markdown(r['notes'])}" for r in rows if r.get("notes")]
    return text + ("\n" + "\n".join(notes) + "\n" if notes else "")
