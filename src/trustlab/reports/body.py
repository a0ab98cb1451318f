"""A report section's content, built in HTML and Markdown side by side, so both show the same text and tables.

Section builders (see :mod:`trustlab.reports.kinds`) accumulate a :class:`Body` and finish it with
:meth:`Body.section` or, for a run's entry in another kind's section, :meth:`Body.part`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustlab.reports.html import Section, escape, figure_html, html_table, paragraph
from trustlab.reports.tables import escape_markdown, markdown_table
from trustlab.runs.atomic import atomic_write_bytes

__all__ = ["Body", "Fragment", "slug"]


@dataclass(frozen=True)
class Fragment:
    """Content for another builder's section: HTML, the same as Markdown, and numbers for ``report.json``.

    Args:
        html: HTML built with the escaping helpers of :mod:`trustlab.reports.html`.
        markdown: the same content as Markdown (escaped); empty when there is nothing to show.
        data: JSON-ready values, merged into the entry the fragment belongs to.
    """

    html: str
    markdown: str
    data: Mapping[str, Any] = field(default_factory=dict)


class Body:
    """A section's content, accumulated in HTML and Markdown side by side.

    Args:
        out_dir: the report folder, where :meth:`figure` writes ``figures/<name>`` (the folder is made when the
            first figure is written); None for a section without figures.
    """

    def __init__(self, out_dir: Path | None = None) -> None:
        self.out_dir = out_dir
        self.html: list[str] = []
        self.md: list[str] = []

    def text(self, s: str, css_class: str | None = None) -> None:
        self.html.append(paragraph(s, css_class=css_class))
        self.md.append(escape_markdown(s) + "\n")

    def heading(self, s: str) -> None:
        self.html.append(f"<h3>{escape(s)}</h3>\n")
        self.md.append(f"### {escape_markdown(s)}\n")

    def bullets(self, items: Sequence[str]) -> None:
        self.html.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>\n")
        self.md.append("".join(f"- {escape_markdown(i)}\n" for i in items))

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, floatfmt: Any = ".1f",
              percent: Any = True) -> None:
        self.html.append(html_table(rows, columns, floatfmt=floatfmt, percent=percent))
        self.md.append(markdown_table(rows, columns, floatfmt=floatfmt, percent=percent))

    def figure(self, png: bytes, name: str, *, alt: str, caption: str) -> None:
        """Write ``figures/<name>`` and show it inline (HTML) or linked (Markdown).

        Raises:
            ValueError: the body has no ``out_dir``.
        """
        if self.out_dir is None:
            raise ValueError(f"this section has no output folder to write the figure {name!r} to")
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out_dir / "figures" / name, png)
        self.html.append(figure_html(png, alt=alt, caption=caption))
        self.md.append(f"![{escape_markdown(alt)}](figures/{name})\n\n*{escape_markdown(caption)}*\n")

    def extend(self, fragment: Fragment) -> None:
        """Append a :class:`Fragment` built by another :class:`Body`."""
        self.html.append(fragment.html)
        if fragment.markdown:
            self.md.append(fragment.markdown)

    def part(self, data: Mapping[str, Any] | None = None) -> Fragment:
        """The content so far as a :class:`Fragment` carrying ``data``."""
        return Fragment("".join(self.html), "\n".join(self.md), dict(data or {}))

    def section(self, id: str, title: str) -> Section:
        return Section(id, title, "".join(self.html), "\n".join(self.md))


def slug(i: int, *parts: str) -> str:
    """A safe, unique file name stem: ``03-run-name-attack``."""
    text = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") for s in parts)
    return f"{i:02d}-{text[:80] or 'x'}"
