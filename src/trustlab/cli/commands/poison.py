"""``trustlab poison backdoor|defend|signature``: data poisoning and backdoors on run folders.

``trustlab poison backdoor --dataset mnist --trigger patch --rate 0.01 --target 0 --out RUN`` trains a run on a
training set of which exactly ``round(rate * N)`` points carry the trigger (relabelled to the target, or from the
target class with ``--mode clean``), through ``trustlab train``'s path (every training flag applies), trains the
clean baseline run ``RUN.clean`` with the same configuration (reused if complete), and commits the ASR and clean
accuracy of both into ``RUN/poisoning/backdoor-<id>/``.
``trustlab poison defend RUN --method spectral|activation-clustering`` flags suspected poisons in the run's
penultimate representations, retrains without them into ``RUN.<method>`` and commits recall, precision and the
ASR / clean accuracy before and after into ``RUN/poisoning/defend-<method>-<id>/``.
``trustlab poison signature RUN`` plants Goldwasser et al.'s signature backdoor in the run's model and commits
the three checks into ``RUN/poisoning/signature-<id>/``.

Each action is one entry of :data:`ACTIONS` (help, arguments, run); another attack is one more entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from trustlab.cli.parsing import add_dataclass_flag, add_global_options, given, shown

NAME = "poison"
HELP = "data poisoning and backdoors: train a backdoored run, defend it, plant a signature backdoor"


class Action(NamedTuple):
    """One `trustlab poison` action: its help line, its arguments and what it runs."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _add_backdoor(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.commands import train
    from trustlab.poisoning.backdoor import MODES
    from trustlab.poisoning.triggers import LOCATIONS, TRIGGERS

    add_global_options(p, suppress=True)
    train.add_arguments(p)  # every training flag: --dataset, --model, --epochs, --out, ...
    p.add_argument("--trigger", choices=sorted(TRIGGERS), default="patch", help="trigger kind (default patch)")
    p.add_argument("--trigger-size", type=int, default=3, help="patch side in pixels (default 3)")
    p.add_argument("--trigger-location", choices=list(LOCATIONS), default="bottom-right",
                   help="patch corner (default bottom-right)")
    p.add_argument("--trigger-margin", type=int, default=1, help="pixels between patch and border (default 1)")
    p.add_argument("--blend-ratio", type=float, default=0.2, help="blend ratio of --trigger blend (default 0.2)")
    p.add_argument("--trigger-seed", type=int, default=0, help="seed of the random and blend patterns (default 0)")
    p.add_argument("--rate", type=float, required=True, help="poisoned fraction of the training set")
    p.add_argument("--target", type=int, required=True, help="target class")
    p.add_argument("--mode", choices=list(MODES), default="dirty", help="dirty-label or clean-label (default dirty)")
    p.add_argument("--baseline", help="the clean baseline run folder (default OUT.clean)")


def _run_backdoor(args: argparse.Namespace) -> int:
    from trustlab.cli.config import load_toml
    from trustlab.evaluation.poisoning_run import backdoor_train
    from trustlab.poisoning.backdoor import BackdoorPoisoning
    from trustlab.poisoning.triggers import Trigger
    from trustlab.training import DEFENSES, TrainConfig, resolve_train_config
    from trustlab.training.defenses import option_prefix

    names = TrainConfig.field_names() + [option_prefix(n) + f.name for n, c in DEFENSES.items() for f in fields(c)]
    options = {**(load_toml(args.config, section="train") if args.config else {}), **given(args, names)}
    config = resolve_train_config(Path(args.out), options, resume=args.resume)
    trigger = Trigger(args.trigger, size=args.trigger_size, location=args.trigger_location, margin=args.trigger_margin,
                      ratio=args.blend_ratio, seed=args.trigger_seed)
    backdoor = BackdoorPoisoning(trigger, rate=args.rate, target=args.target, mode=args.mode)
    baseline = Path(args.baseline) if args.baseline else Path(f"{args.out}.clean")
    s = backdoor_train(config, Path(args.out), backdoor, baseline=baseline, progress=not args.quiet,
                       overwrite=args.overwrite, resume=args.resume)
    print(f"{shown(args.out)}: ASR {s['asr']:.4f} (clean-trained baseline {s['baseline_asr']:.4f}) on "
          f"{s['n_asr']} triggered test inputs with y != {args.target}; clean accuracy {s['clean_acc']:.4f} "
          f"(baseline {s['baseline_clean_acc']:.4f})")
    return 0


def _run_and_root(p: argparse.ArgumentParser, what: str) -> None:
    add_global_options(p, suppress=True)
    p.add_argument("run", help=what)
    p.add_argument("--root", help="data root")


def _add_defend(p: argparse.ArgumentParser) -> None:
    from trustlab.poisoning.defenses import METHODS

    _run_and_root(p, "run folder written by `trustlab poison backdoor`")
    p.add_argument("--method", choices=list(METHODS), required=True, help="the defense")
    p.add_argument("--out", help="retrained run folder (default RUN.<method>)")
    p.add_argument("--baseline", help="clean baseline run for the baseline ASR (default RUN.clean if present)")
    p.add_argument("--epsilon", type=float,
                   help="spectral: assumed poisoned share of each class (default: poisons / target-class size)")
    p.add_argument("--seed", type=int, default=0, help="seed of activation clustering (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing retrained run folder")


def _run_defend(args: argparse.Namespace) -> int:
    from trustlab.evaluation.poisoning_run import defend_run

    out = Path(args.out) if args.out else Path(f"{args.run}.{args.method}")
    baseline = Path(args.baseline) if args.baseline else Path(f"{args.run}.clean")
    s = defend_run(Path(args.run), args.method, out=out, baseline=baseline if baseline.exists() else None,
                   root=args.root, epsilon=args.epsilon, seed=args.seed, progress=not args.quiet,
                   overwrite=args.overwrite)
    print(f"{shown(args.run)}: {args.method} flagged {s['n_flagged']} of the training points; recall "
          f"{s['recall']:.4f}, precision {s['precision']:.4f} against {s['n_poisoned']} poisons. Retrained in "
          f"{shown(out)}: ASR {s['asr_before']:.4f} -> {s['asr_after']:.4f}, clean accuracy "
          f"{s['clean_acc_before']:.4f} -> {s['clean_acc_after']:.4f}")
    return 0


def _add_signature(p: argparse.ArgumentParser) -> None:
    _run_and_root(p, "any trained run folder")
    p.add_argument("--queries", type=int, default=10_000,
                   help="random uniform queries, and as many perturbed test inputs (default 10000)")
    p.add_argument("--n-examples", type=int, help="the first N test examples (default all)")
    p.add_argument("--key-seed", type=int, help="a reproducible (hence public) key; default a fresh secret key")
    p.add_argument("--bits-per-pixel", type=int, default=12, help="payload bits per carrier pixel (default 12)")
    p.add_argument("--pgd-steps", type=int, default=10, help="key-less PGD steps per target label (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random queries (default 0)")


def _run_signature(args: argparse.Namespace) -> int:
    from trustlab.evaluation.poisoning_run import signature_run

    s = signature_run(Path(args.run), queries=args.queries, n_examples=args.n_examples, key_seed=args.key_seed,
                      bits_per_pixel=args.bits_per_pixel, pgd_steps=args.pgd_steps, seed=args.seed, root=args.root)
    print(f"{shown(args.run)}: signature backdoor ({s['carrier_pixels']} carrier pixels, l_inf <= "
          f"{s['linf_budget']:.3g})\n"
          f"  (a) differing answers: {s['a_differ_test']} test, {s['a_differ_uniform']} uniform, "
          f"{s['a_differ_perturbed']} perturbed ({s['a_queries']} queries)\n"
          f"  (b) activated to every label: {s['b_activated']} of {s['n_examples']} inputs, max l_inf "
          f"{s['b_max_linf']:.3g}\n"
          f"  (c) key-less PGD: {s['c_gradient_differ']} differing of {s['c_gradient_queries']} queries")
    return 0


ACTIONS: dict[str, Action] = {
    "backdoor": Action("train a run on a backdoor-poisoned training set, and its clean baseline",
                       _add_backdoor, _run_backdoor),
    "defend": Action("flag poisons (spectral signatures, activation clustering), remove them, retrain",
                     _add_defend, _run_defend),
    "signature": Action("plant a signature backdoor (Goldwasser et al. 2022) in a run's model and check it",
                        _add_signature, _run_signature),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.parsing import Parser

    sub = p.add_subparsers(dest="poison_action", required=True, parser_class=Parser)
    for name, action in ACTIONS.items():
        action.add_arguments(sub.add_parser(name, help=action.help))


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.poison_action].run(args)
