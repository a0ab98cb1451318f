"""``build_report``: rebuild every table, plot and flag of a set of runs from their records alone.

Writes ``report.md``, ``report.html`` (one self-contained page), ``report.json`` (the numbers behind both) and
PNG figures under ``figures/``. No model is loaded. Each figure is followed by a table built from the same metric
output, so the picture and the numbers cannot disagree.

The sections come from the record kinds (:mod:`trustlab.reports.kinds`) present in the runs, in the kinds' fixed
order: today the attack kind's (matrix, diagnosis, curves, per-class, examples), then the training kind's
(training, runs). A new kind adds its sections without a change here.

Reference:
    Carlini et al. 2019, "On Evaluating Adversarial Robustness", arXiv:1902.06705 (describe every attack with
    all its hyperparameters); reliability-tests.md EVAL-05, EVAL-11, EVAL-20, SEC-12.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trustlab.reports.html import Section, render_page
from trustlab.reports.kinds import RecordKind, ReportContext, builtin_kinds, record_kinds
from trustlab.reports.metrics import default_threat
from trustlab.reports.runs import RunView, load_runs, norm_label
from trustlab.reports.tables import escape_markdown
from trustlab.runs.atomic import atomic_write_text
from trustlab.runs.records import write_json
from trustlab.threat import parse_p

__all__ = ["build_report", "report_kinds", "Section", "SECTION_IDS"]

log = logging.getLogger(__name__)
# the sections every report has, in report order (a kind that reports only when present adds its own after)
SECTION_IDS = tuple(sid for kind in builtin_kinds() if kind.folder is None or kind.report_when_absent
                    for sid in kind.section_ids)


def report_kinds(runs: Sequence[RunView]) -> tuple[RecordKind, ...]:
    """The registered kinds a report of ``runs`` shows, in order: the run root's kind, the kinds that report
    even when absent, and every kind some run holds a record set of."""
    return tuple(k for k in record_kinds()
                 if k.folder is None or k.report_when_absent or any(run.views(k.name) for run in runs))


def build_report(
    run_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    eps: float | None = None,
    p: float | str | None = None,
    title: str = "trustlab report",
    extra_sections: Sequence[Section] = (),
    max_examples: int = 4,
) -> Path:
    """Build the report of ``run_paths`` into ``out_dir``.

    Args:
        run_paths: training run folders (each with ``config.json``, ``records.jsonl`` and ``attacks/``).
        out_dir: where ``report.md``, ``report.html``, ``report.json`` and ``figures/`` go (created).
        eps: the budget of the robustness matrix, per-class bars and example grids; defaults to the one most
            runs were evaluated at.
        p: its norm (``"inf"``, ``2``); defaults to the most common at ``eps``.
        title: the report's title.
        extra_sections: more sections, appended after the built-in ones (ids must not clash).
        max_examples: adversarial examples shown per run.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: no runs, ``max_examples < 1``, a section id used twice, or two kinds writing the same key
            of ``report.json``. Nothing is written then.
        FileNotFoundError: a run folder or one of its required files is missing.
    """
    if len(run_paths) == 0:
        raise ValueError("run_paths is empty; give at least one run folder")
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    runs = load_runs(list(run_paths))
    kinds = report_kinds(runs)
    ids = [sid for kind in kinds for sid in kind.section_ids] + [s.id for s in extra_sections]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"section ids must be unique, got duplicates {dupes}")
    p = parse_p(p) if p is not None else None
    threat = default_threat(runs, eps) if eps is None or p is None else (float(eps), p)
    if threat is None and eps is not None:
        threat = (float(eps), p if p is not None else math.inf)
    out_dir = Path(out_dir)  # created when the first file is written, so a failed build leaves no empty folder
    ctx = ReportContext(runs=tuple(runs), threat=threat, out_dir=out_dir, max_examples=max_examples, kinds=kinds)
    data: dict[str, Any] = {"title": title}
    if threat:
        data["threat"] = {"eps": threat[0], "p": norm_label(threat[1])}
    sections = []
    for kind in kinds:
        for sid, build in kind.sections:
            part = build(ctx)
            if part.section.id != sid:
                raise ValueError(f"kind {kind.name!r} built the section {part.section.id!r} in place of {sid!r}")
            clash = sorted(set(part.data) & set(data))
            if clash:
                raise ValueError(f"section {sid!r} of kind {kind.name!r} writes the report.json keys {clash}, "
                                 "which are already written")
            data.update(part.data)
            sections.append(part.section)
    sections += extra_sections
    subtitle = f"{len(runs)} run(s); rebuilt from records.jsonl files, no model loaded"
    left_out = [m for run in runs for m in run.left_out]
    if left_out:  # results of another checkpoint are never combined with the run's own records
        data["left_out"] = left_out
        subtitle += f"; {len(left_out)} result(s) of another checkpoint left out: " + "; ".join(left_out)
    page = render_page(title, sections, subtitle=subtitle)
    md = [f"# {escape_markdown(title)}\n", f"{escape_markdown(subtitle)}\n"]
    md += [f'<a id="{s.id}"></a>\n\n## {escape_markdown(s.title)}\n\n{s.markdown_body}' for s in sections]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    write_json(out_dir / "report.json", data)
    return atomic_write_text(out_dir / "report.html", page)
