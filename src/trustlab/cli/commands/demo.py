"""``trustlab demo``: the main job on the embedded digits data (no files needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "the main job on the embedded digits data (no files needed)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo")


def run(args: argparse.Namespace) -> int:
    from trustlab.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0
