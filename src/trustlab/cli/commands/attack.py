"""``trustlab attack``: attack a trained run's model on its test split and write per-example records."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path

from trustlab.cli.parsing import given, shown

NAME = "attack"
HELP = "attack a trained run's model on its test split"
DISTRIBUTED = True  # under torchrun: the batches are shared out, rank 0 writes the one folder

# flag dest -> attack config field; a flag given for an attack without that field is an error
_ATTACK_FLAGS = {"steps": "--steps", "step_size": "--step-size", "restarts": "--restarts", "loss": "--loss",
                 "random_start": "--random-start/--no-random-start", "queries": "--queries",
                 "n_target_classes": "--n-target-classes", "ensemble_version": "--ensemble-version"}
# flag dest -> config field where they differ (--version is the top-level parser's)
_FIELD = {"ensemble_version": "version"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.attacks import ATTACKS, LOSSES, VERSIONS
    from trustlab.compute import PRECISIONS
    from trustlab.device import DEVICES

    p.add_argument("run", help="run folder written by `trustlab train`")
    p.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="the attack (default pgd)")
    p.add_argument("--eps", type=float, required=True, help="the threat's budget")
    p.add_argument("--p", default="inf", choices=["inf", "2"], help="the threat's norm (default inf)")
    p.add_argument("--steps", type=int,
                   help="iterations of an iterative attack (pgd: default 10; apgd, apgd-t, fab, fab-t: 100)")
    p.add_argument("--step-size", type=float, help="step size (pgd: default 2.5 * eps / steps; fgsm-rs: 1.25 * eps)")
    p.add_argument("--restarts", type=int,
                   help="restarts; each re-attacks only points still robust "
                        "(pgd, apgd, fab; apgd-t, fab-t: per target class)")
    p.add_argument("--n-target-classes", type=int,
                   help="how many of the top other classes to target in turn (apgd-t, fab-t; default 9)")
    p.add_argument("--loss", choices=sorted(LOSSES),
                   help="the loss the attack ascends (default ce; square: margin; apgd-t: dlr-targeted, which only it "
                        "can use)")
    p.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="start from a random point of the ball (pgd; default on)")
    p.add_argument("--queries", type=int,
                   help="forward passes per example of a query-based attack, the clean one included (square: 5000)")
    p.add_argument("--ensemble-version", choices=sorted(VERSIONS),
                   help="the ensemble's fixed composition (ensemble: default standard = APGD-CE, APGD-T, FAB-T, "
                        "Square 5000 queries, l_inf or l_2; rand = APGD-CE and APGD-DLR with EOT over 20 draws, "
                        "for randomized models)")
    p.add_argument("--bpda", action="store_true",
                   help="attack through BPDA: the model's leading non-differentiable preprocessing (input "
                        "quantization) counts as the identity in the backward pass (Athalye et al. 2018)")
    p.add_argument("--subset", type=int, help="attack only the first N test examples of the seeded split")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", help="data root")
    p.add_argument("--device", choices=list(DEVICES), default="auto", help="where to compute (default auto)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="the model's forward passes in fp32 or under bf16 autocast; the perturbation, its "
                        "projection and the loss stay float32 (default fp32; bf16 is part of the evaluation's id)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for the model and its inputs (faster convolutions on GPUs)")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile")


def attack_params(attack: str, args: argparse.Namespace) -> dict:
    """The attack's settings from the flags given; a flag the attack does not take is an error.

    Raises:
        ValueError: a flag that ``attack`` does not take, naming the flags it does take.
    """
    from trustlab.attacks import ATTACKS

    takes = {f.name for f in fields(ATTACKS[attack])}
    flags = given(args, _ATTACK_FLAGS)
    foreign = [_ATTACK_FLAGS[k] for k in flags if _FIELD.get(k, k) not in takes]
    if foreign:
        valid = [flag for k, flag in _ATTACK_FLAGS.items() if _FIELD.get(k, k) in takes]
        raise ValueError(f"attack {attack!r} does not take {', '.join(foreign)}; it takes {valid or 'no setting'}")
    return {_FIELD.get(k, k): v for k, v in flags.items()}


def run(args: argparse.Namespace) -> int:
    from trustlab.compute import Compute, check_compute
    from trustlab.device import resolve_device
    from trustlab.distributed import distributed
    from trustlab.evaluation import attack_run
    from trustlab.threat import LpBall

    threat = LpBall(args.eps, args.p)
    params = attack_params(args.attack, args)
    compute = check_compute(Compute(args.precision, args.channels_last, args.compile), resolve_device(args.device))
    with distributed(resolve_device(args.device)) as job:  # one process: no process group
        summary = attack_run(Path(args.run), args.attack, threat, params, subset=args.subset,
                             batch_size=args.batch_size, seed=args.seed, root=args.root, progress=not args.quiet,
                             device=args.device, bpda=args.bpda, compute=compute, job=job)
    if not job.is_main:
        return 0
    norm = "inf" if threat.p == math.inf else "2"
    print(f"{shown(args.run)}: {args.attack}{'+bpda' if args.bpda else ''} (l_{norm}, eps={threat.eps:g}) on {summary['n']} test examples: "
          f"clean {summary['clean_acc']:.4f}, robust {summary['robust_acc']:.4f} ({summary['seconds']:.0f} s)")
    return 0
