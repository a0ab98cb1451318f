"""The optimizer-trajectory demos as files and as a report section (figures, each followed by its table)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustlab.runs.atomic import atomic_write_json, atomic_write_text
from trustlab.reports.html import Section, escape, figure_html, html_table
from trustlab.reports.tables import escape_markdown, markdown_table

__all__ = ["write_optim_outputs", "optim_section", "COLUMNS"]

COLUMNS = ("label", "objective", "steps", "final_loss", "final_grad_norm", "diverged", "lesson")
_FMT = {"final_loss": ".4g", "final_grad_norm": ".3g"}


def _by_figure(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["figure"], []).append(r)
    return groups


def write_optim_outputs(rows: Sequence[dict[str, Any]], out: Path) -> str:
    """Write ``optim.json`` (the rows) and ``optim.md`` (one table per figure) into ``out``; return the Markdown."""
    out = Path(out)
    atomic_write_json(out / "optim.json", {"rows": list(rows)})
    parts = []
    for figure, group in _by_figure(rows).items():
        parts.append(f"![{escape_markdown(figure)}]({figure})\n")
        parts.append(markdown_table(group, COLUMNS, floatfmt=_FMT, percent=False))
    md = "\n".join(parts)
    atomic_write_text(out / "optim.md", "# Optimizer trajectories\n\n" + md + "\n")
    return md


def optim_section(rows: Sequence[dict[str, Any]], figures_dir: Path) -> Section:
    """A report section with every trajectory figure inlined, each followed by its table."""
    html, md = [], []
    for figure, group in _by_figure(rows).items():
        png = (Path(figures_dir) / figure).read_bytes()
        caption = f"{group[0]['objective']}: " + "; ".join(r["status"] for r in group)
        html.append(figure_html(png, alt=figure, caption=caption))
        html.append(html_table(group, COLUMNS, floatfmt=_FMT, percent=False))
        md.append(f"![{escape_markdown(figure)}](figures/{figure})\n\n"
                  + markdown_table(group, COLUMNS, floatfmt=_FMT, percent=False))
    intro = ("Gradient descent, noisy gradient descent, momentum and Adam on the lecture's objectives. Each figure "
             "shows the iterates as arrows over the contours and the loss per step; the table under it gives the same "
             "runs as numbers.")
    return Section(id="optim", title="Optimizer trajectories",
                   html_body=f"<p>{escape(intro)}</p>" + "".join(html), markdown_body=intro + "\n\n" + "\n\n".join(md))
