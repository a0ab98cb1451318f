"""A self-contained HTML page: inline CSS, images as ``data:`` URIs, no JavaScript, no external URL.

Every string that comes from a file or a user (run, class and attack names, config values) goes through
:func:`escape` (SEC-12), and the page's Content-Security-Policy forbids scripts and remote loads altogether, so
even a missed escape cannot run code. :class:`Section` lets later features (optimizer trajectories,
certification) add their own parts to a report.
"""

from __future__ import annotations

import base64
import html as _html
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trustlab.reports.tables import format_rows, strip_ansi

__all__ = ["Section", "escape", "html_table", "figure_html", "paragraph", "render_page", "CSP"]

_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem; margin-top: 2.5rem; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4rem 1.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
figure { margin: 1rem 0 0.4rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: 0.85rem; color: #57606a; }
.flag-error { color: #a40e26; font-weight: 600; } .flag-warning { color: #9a6700; font-weight: 600; }
.muted { color: #57606a; } code { background: #f6f8fa; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class Section:
    """One part of a report, in both formats.

    Args:
        id: the HTML anchor: a letter, then letters, digits, ``-`` or ``_``.
        title: the heading (plain text; escaped when rendered).
        html_body: the section's HTML. It is inserted as is: build it with :func:`escape`,
            :func:`html_table`, :func:`figure_html` and :func:`paragraph`, which escape their text.
        markdown_body: the same content as Markdown (escape text with
            :func:`~trustlab.reports.tables.escape_markdown`).

    Raises:
        ValueError: ``id`` is not a valid anchor.
    """

    id: str
    title: str
    html_body: str
    markdown_body: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise ValueError(f"section id must be a letter followed by letters, digits, '-' or '_', got {self.id!r}")


def escape(value: Any) -> str:
    """``str(value)`` as HTML text: ``<>&"'`` escaped, control characters and ANSI escape sequences removed."""
    return _html.escape(strip_ansi(value), quote=True)


def paragraph(text: str, *, css_class: str | None = None) -> str:
    """``<p>`` holding ``text`` escaped."""
    cls = f' class="{escape(css_class)}"' if css_class else ""
    return f"<p{cls}>{escape(text)}</p>\n"


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    floatfmt: str | Mapping[str, str] = ".1f",
    percent: bool | Collection[str] = True,
    caption: str | None = None,
) -> str:
    """An HTML table with the same cells as :func:`~trustlab.reports.tables.markdown_table`, escaped.

    Raises:
        ValueError: ``columns`` is empty.
    """
    if len(columns) == 0:
        raise ValueError("columns must name at least one column, got none")
    headers = headers or {}
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{escape(headers.get(c, c))}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for cells in format_rows(rows, columns, floatfmt=floatfmt, percent=percent):
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>\n")
    return "\n".join(out)


def figure_html(png: bytes, *, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG inlined as a base64 ``data:`` URI and an escaped caption.

    Raises:
        ValueError: ``png`` does not start with the PNG signature.
    """
    if not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"png must be PNG bytes, got {len(png)} bytes starting {bytes(png[:8])!r}")
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{cap}</figure>\n'


def render_page(title: str, sections: Sequence[Section], *, subtitle: str | None = None) -> str:
    """The whole page: a table of contents, then each section as ``<section id=...>`` with an ``<h2>``.

    Raises:
        ValueError: two sections share an id.
    """
    ids = [s.id for s in sections]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"section ids must be unique, got duplicates {dupes}")
    toc = "".join(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(
        f'<section id="{escape(s.id)}">\n<h2>{escape(s.title)}</h2>\n{s.html_body}</section>\n' for s in sections
    )
    sub = f'<p class="muted">{escape(subtitle)}</p>\n' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{escape(title)}</h1>\n{sub}<nav><ul>{toc}</ul></nav></header>\n<main>\n{body}</main>\n"
        "</body>\n</html>\n"
    )
