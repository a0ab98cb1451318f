"""``trustlab report``: rebuild tables, plots, Markdown and HTML from run records alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from trustlab.cli.parsing import shown

NAME = "report"
HELP = "rebuild tables, plots, Markdown and HTML from run records"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", default="report")
    p.add_argument("--eps", type=float, help="threat model of the matrix (default: the most evaluated)")
    p.add_argument("--p", choices=["inf", "2"])
    p.add_argument("--title", default="trustlab report")


def run(args: argparse.Namespace) -> int:
    from trustlab.reports.report import build_report

    path = build_report(args.runs, Path(args.out), eps=args.eps, p=args.p, title=args.title)
    print(f"Report: {shown(path)} (Markdown: {shown(path.with_suffix('.md'))})")
    return 0
