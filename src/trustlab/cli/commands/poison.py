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
``trustlab poison svm --pair 7,1 --points 10 --train-size 100 --kernel linear --out OUT`` poisons an SVM on a digit
pair (Biggio et al. 2012) and writes the experiment folder OUT with ``OUT/poisoning/svm-<id>/`` (one row per
attack step, the label-flipping baseline, the poison images).
``trustlab poison frogs RUN --dataset mnist --pairs 50`` runs Poison Frogs with RUN's model as the frozen feature
extractor and commits ``RUN/poisoning/frogs-<id>/`` (one row per target/base pair, the poison images); with
``--end-to-end --poisons K --opacity 0.3`` it crafts K watermarked poisons per target, fine-tunes the whole network
on them and on a control, and commits ``RUN/poisoning/frogs-e2e-<id>/`` (one row per target).
``trustlab poison append --poisons SET ... --out RUN`` trains any registry model on its training set plus those
poisons (every training flag applies); ``RUN/data_transform.json`` lists their indices.

Each action is one entry of :data:`ACTIONS` (help, arguments, run); another attack is one more entry.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from trustlab.cli.parsing import add_global_options, given, shown

NAME = "poison"
HELP = ("data poisoning and backdoors: train a backdoored run, defend it, plant a signature backdoor, poison an "
        "SVM, Poison Frogs")


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
          f"{s['b_max_linf']:.3g}, {1e3 * s['b_seconds_per_input']:.3g} ms per activated input\n"
          f"  (c) key-less PGD: {s['c_gradient_differ']} differing of {s['c_gradient_queries']} queries")
    return 0


def _pair(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"a pair is two classes 'A,B', got {text!r}")
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"a pair is two integer classes 'A,B', got {text!r}") from None


def _add_svm(p: argparse.ArgumentParser) -> None:
    add_global_options(p, suppress=True)
    p.add_argument("--out", required=True, help="experiment folder to create")
    p.add_argument("--pair", type=_pair, default=(7, 1),
                   help="classes 'A,B' (default 7,1); poisons are cloned from A and labelled B")
    n = p.add_mutually_exclusive_group()
    n.add_argument("--points", type=int, help="poison points added one at a time (default 1)")
    n.add_argument("--rate", type=float, help="or the poisoned fraction of the training set, in [0, 1]")
    p.add_argument("--dataset", default="mnist", help="image dataset (default mnist)")
    p.add_argument("--train-size", type=int, default=100, help="training points (default 100, the paper's)")
    p.add_argument("--val-size", type=int, default=500, help="the attacker's validation points (default 500)")
    p.add_argument("--test-size", type=int, help="test points from the test split (default: all of the pair's)")
    p.add_argument("--kernel", choices=["linear", "rbf"], default="linear", help="SVM kernel (default linear)")
    p.add_argument("--C", type=float, default=1.0, help="SVM box constraint (default 1, the paper's)")
    p.add_argument("--gamma", type=float, default=0.01, help="RBF width (default 0.01)")
    p.add_argument("--steps", type=int, default=100, help="most gradient steps per poison point (default 100)")
    p.add_argument("--step-size", type=float, default=0.25, help="first line-search step (default 0.25)")
    p.add_argument("--halvings", type=int, default=6, help="line-search halvings (default 6)")
    p.add_argument("--margin-point", choices=["paper", "exact"], default="paper",
                   help="gradient when the poison is a margin support vector (default paper: alpha_c fixed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and starting points (default 0)")
    p.add_argument("--root", help="data root")
    p.add_argument("--overwrite", action="store_true", help="replace an existing experiment folder")


def _run_svm(args: argparse.Namespace) -> int:
    from trustlab.evaluation.svm_poisoning_run import svm_poisoning_run
    from trustlab.poisoning.svm import SVMPoisonConfig

    config = SVMPoisonConfig(kernel=args.kernel, C=args.C, gamma=args.gamma, steps=args.steps,
                             step_size=args.step_size, halvings=args.halvings, margin_point=args.margin_point)
    points = args.points if args.points is not None or args.rate is not None else 1
    s = svm_poisoning_run(Path(args.out), pair=args.pair, n_points=points, rate=args.rate, config=config,
                          dataset=args.dataset, n_train=args.train_size, n_val=args.val_size, n_test=args.test_size,
                          seed=args.seed, root=args.root, overwrite=args.overwrite)
    print(f"{shown(args.out)}: {args.kernel} SVM, {s['pair'][0]} vs {s['pair'][1]}, {s['n_train']} training points: "
          f"test error {s['clean_test_error']:.4f} clean, {s['one_point_test_error']:.4f} with one poison point, "
          f"{s['final_test_error']:.4f} with {s['n_poison']} (label flipping: {s['label_flip_test_error']:.4f})")
    return 0


def _add_frogs(p: argparse.ArgumentParser) -> None:
    _run_and_root(p, "trained run whose model (up to its last linear layer) is the frozen feature extractor")
    p.add_argument("--dataset", default="mnist", help="the transfer dataset (default mnist)")
    p.add_argument("--pairs", type=int, default=50,
                   help="target/base pairs, one poison each (default 50); with --end-to-end the number of targets")
    p.add_argument("--target-class", type=int, help="the targets' class (with --base-class; default: ten pairs)")
    p.add_argument("--base-class", type=int, help="the bases' class, the poisons' label")
    p.add_argument("--beta0", type=float, default=0.25, help="the paper's base weight before scaling (default 0.25)")
    p.add_argument("--step-size", type=float, default=0.001, help="forward step lambda (default 0.001)")
    p.add_argument("--steps", type=int, default=300, help="forward-backward iterations (default 300)")
    p.add_argument("--opacity", type=float, default=0.0, help="watermark opacity in [0, 1) (default 0)")
    p.add_argument("--train-size", type=int, default=2000, help="training points of the retrained head (default 2000)")
    p.add_argument("--eval-size", type=int, default=2000, help="test points for clean accuracy (default 2000)")
    p.add_argument("--two-class", action="store_true",
                   help="the paper's binary setting: the head sees only the target and base classes")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    e2e = p.add_argument_group("end to end (Shafahi et al. Section 5: several watermarked poisons, whole network "
                               "fine-tuned)")
    e2e.add_argument("--end-to-end", action="store_true",
                     help="K poisons per target, then fine-tune every layer from RUN's weights (with --target-class "
                          "and --base-class; --pairs counts targets)")
    e2e.add_argument("--poisons", type=int, default=50, help="K, poisons per target (default 50, the paper's)")
    e2e.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    e2e.add_argument("--lr", type=float, help="fine-tuning learning rate, constant (default RUN's)")
    e2e.add_argument("--batch-size", type=int, help="fine-tuning batch size (default RUN's)")


def _run_frogs(args: argparse.Namespace) -> int:
    from trustlab.evaluation.frogs_run import frogs_run
    from trustlab.poisoning.feature_collision import FeatureCollisionConfig

    config = FeatureCollisionConfig(beta0=args.beta0, step_size=args.step_size, steps=args.steps,
                                    opacity=args.opacity)
    if args.end_to_end:
        return _run_frogs_end_to_end(args, config)
    s = frogs_run(Path(args.run), dataset=args.dataset, pairs=args.pairs, target_class=args.target_class,
                  base_class=args.base_class, config=config, train_size=args.train_size, eval_size=args.eval_size,
                  seed=args.seed, root=args.root, two_class=args.two_class)
    print(f"{shown(args.run)}: Poison Frogs on {args.dataset}, {s['pairs']} pairs: success {s['success_rate']:.4f} "
          f"({s['success_on_clean_correct']:.4f} of the {s['clean_correct']} targets the clean model got right); "
          f"perturbation l2 {s['delta_l2_mean']:.3f} (max {s['delta_l2_max']:.3f}), l_inf {s['delta_linf_mean']:.3f} "
          f"(max {s['delta_linf_max']:.3f}); clean accuracy {s['clean_acc_before']:.4f} -> "
          f"{s['clean_acc_after_mean']:.4f} (mean over pairs)")
    return 0


def _run_frogs_end_to_end(args: argparse.Namespace, config) -> int:
    from trustlab.evaluation.frogs_end_to_end import frogs_end_to_end_run

    s = frogs_end_to_end_run(Path(args.run), target_class=args.target_class, base_class=args.base_class,
                             dataset=args.dataset, targets=args.pairs, poisons=args.poisons, config=config,
                             train_size=args.train_size, eval_size=args.eval_size, finetune_epochs=args.finetune_epochs,
                             lr=args.lr, batch_size=args.batch_size, seed=args.seed, root=args.root,
                             two_class=args.two_class)
    print(f"{shown(args.run)}: Poison Frogs end to end on {args.dataset}, {s['targets']} targets, {s['poisons']} "
          f"poisons each: success {s['success_rate']:.4f}; controls: unperturbed watermarked bases "
          f"{s['control_success_rate']:.4f}, no additions {s['clean_finetune_success_rate']:.4f}; perturbation l2 "
          f"{s['delta_l2_mean']:.3f} (max {s['delta_l2_max']:.3f}), l_inf {s['delta_linf_mean']:.3f} (max "
          f"{s['delta_linf_max']:.3f}); clean accuracy {s['clean_acc_before']:.4f} -> {s['clean_acc_after_mean']:.4f} "
          f"(control {s['control_acc_after_mean']:.4f}, no additions {s['clean_finetune_acc']:.4f})")
    return 0


def _add_append(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.commands import train

    add_global_options(p, suppress=True)
    train.add_arguments(p)  # every training flag: --dataset, --model, --epochs, --out, ...
    p.add_argument("--poisons", required=True,
                   help="a poisons.safetensors file, or the record set folder of `poison svm|frogs` holding one")
    p.add_argument("--limit", type=int, help="append only the first N poisons (default all)")


def _run_append(args: argparse.Namespace) -> int:
    from trustlab.cli.config import load_toml
    from trustlab.poisoning.appended import AppendedPoisons
    from trustlab.training import DEFENSES, TrainConfig, resolve_train_config
    from trustlab.training.defenses import option_prefix
    from trustlab.training.run import train_run

    names = TrainConfig.field_names() + [option_prefix(n) + f.name for n, c in DEFENSES.items() for f in fields(c)]
    options = {**(load_toml(args.config, section="train") if args.config else {}), **given(args, names)}
    config = resolve_train_config(Path(args.out), options, resume=args.resume)
    train_run(config, Path(args.out), transform=AppendedPoisons(args.poisons, limit=args.limit),
              progress=not args.quiet, overwrite=args.overwrite, resume=args.resume)
    print(f"{shown(args.out)}: trained on the training set plus the poisons of {shown(args.poisons)} "
          f"(indices in data_transform.json)")
    return 0


ACTIONS: dict[str, Action] = {
    "backdoor": Action("train a run on a backdoor-poisoned training set, and its clean baseline",
                       _add_backdoor, _run_backdoor),
    "defend": Action("flag poisons (spectral signatures, activation clustering), remove them, retrain",
                     _add_defend, _run_defend),
    "signature": Action("plant a signature backdoor (Goldwasser et al. 2022) in a run's model and check it",
                        _add_signature, _run_signature),
    "svm": Action("poison an SVM by gradient ascent (Biggio et al. 2012) on a digit pair, with label flipping",
                  _add_svm, _run_svm),
    "frogs": Action("Poison Frogs (Shafahi et al. 2018): one clean-label poison per target, transfer learning; "
                    "or --end-to-end: K poisons per target, the whole network fine-tuned",
                    _add_frogs, _run_frogs),
    "append": Action("train a registry model on its training set plus the poisons saved by `poison svm|frogs`",
                     _add_append, _run_append),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.cli.parsing import Parser

    sub = p.add_subparsers(dest="poison_action", required=True, parser_class=Parser)
    for name, action in ACTIONS.items():
        action.add_arguments(sub.add_parser(name, help=action.help))


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.poison_action].run(args)
