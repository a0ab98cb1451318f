"""Every option of a command that runs under torchrun has a spelling torchrun's own parser passes through.

torchrun parses the whole command line with argparse, abbreviations allowed, before it hands the rest to the
script: ``--n`` there is an (ambiguous) abbreviation of ``--nnodes``, ``--nproc-per-node``, ... and stops the
job before it starts. ``verify --n-examples`` and ``smooth --n-samples`` are the spellings that get through.
"""

from __future__ import annotations

import argparse

from torch.distributed.run import get_args_parser

from trustlab.cli.main import build_parser

_TORCHRUN = {o for a in get_args_parser()._actions for o in a.option_strings}


def _taken(option: str) -> bool:
    """Whether torchrun's parser would take ``option`` as (an abbreviation of) one of its own."""
    return any(t == option or (option.startswith("--") and t.startswith(option)) for t in _TORCHRUN)


def _options(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _options(p, f"{name} {sub}")
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield name, action.option_strings


def test_distributed_commands_have_torchrun_safe_spellings():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    distributed = {name: p for name, p in commands.choices.items() if p.get_default("distributed")}
    assert set(distributed) == {"train", "attack", "verify", "smooth"}
    blocked = [(cmd, opts) for name, p in distributed.items() for cmd, opts in _options(p, name)
               if all(_taken(o) for o in opts)]
    assert not blocked
    assert _taken("--n")  # the case this guards: verify's and smooth's --n need their long spellings
    assert not _taken("--n-examples") and not _taken("--n-samples")
