"""``trustlab <command>``: parse, build, call the library, write the run folder.

Subcommands register themselves in :mod:`trustlab.cli.commands`. Errors print one line on stderr naming the bad
value and exit non-zero (2 for bad input); ``--debug`` shows the traceback.

Under ``torchrun`` with more than one process, only the commands that set ``DISTRIBUTED = True`` (``train``,
``attack``, ``verify``, ``smooth``) run; ranks other than 0 log warnings and errors only, and print nothing else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from trustlab.cli.commands import commands
from trustlab.cli.parsing import Parser, add_global_options, shown
from trustlab.errors import TrustlabError

__all__ = ["main", "build_parser"]

log = logging.getLogger("trustlab")


def build_parser() -> argparse.ArgumentParser:
    from trustlab import __version__

    parser = Parser(prog="trustlab", description="Trustworthy ML through optimization.")
    parser.add_argument("--version", action="version", version=f"trustlab {__version__}")
    add_global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in commands():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        add_global_options(p, suppress=True)
        module.add_arguments(p)
        p.set_defaults(handler=module.run, distributed=getattr(module, "DISTRIBUTED", False))
    return parser


def main(argv: list[str] | None = None) -> int:
    from trustlab.distributed import from_env

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        job = from_env()
    except ValueError as e:
        print(f"trustlab {args.command}: error: {shown(e)}", file=sys.stderr)
        return 2
    if not job.is_main:  # one process logs for the job
        args.quiet = True
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"%(levelname)s {f'[rank {job.rank}] ' if job.enabled else ''}%(name)s: %(message)s")
    if job.enabled and not args.distributed:
        print(f"trustlab {args.command}: error: this command does not run distributed ({job.world_size} processes "
              "under torchrun); run it as one process, or use train, attack, verify or smooth", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"trustlab {args.command}: error: {shown(e)}", file=sys.stderr)
        return 2
    except (TrustlabError, OSError) as e:
        if args.debug:
            raise
        print(f"trustlab {args.command}: error: {shown(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
