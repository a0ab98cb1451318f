"""``trustlab train``: train a model (standard, adversarial, TRADES...) into a run folder."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from trustlab.cli.parsing import add_dataclass_flag, given, shown

NAME = "train"
HELP = "train a model (standard or adversarial) into a run folder"
DISTRIBUTED = True  # under torchrun: data-parallel training, rank 0 writes

_CHOICES = {"p": ("inf", "2")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trustlab.compute import PRECISIONS
    from trustlab.data import DATASETS
    from trustlab.device import DEVICES
    from trustlab.models import model_names
    from trustlab.training import DEFENSES, OPTIMIZERS, SCHEDULES, TrainConfig
    from trustlab.training.defenses import option_prefix

    choices = {**_CHOICES, "dataset": sorted(DATASETS), "model": model_names(), "defense": list(DEFENSES),
               "optimizer": list(OPTIMIZERS), "schedule": list(SCHEDULES), "device": list(DEVICES),
               "precision": list(PRECISIONS)}
    p.add_argument("--config", help="TOML recipe with TrainConfig keys under [train] (flags override it)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    for f in fields(TrainConfig):
        add_dataclass_flag(p, f, choices=choices.get(f.name))
    for name, cls in DEFENSES.items():  # --pgd-steps, --fgsm-rs-step-size, --trades-beta ...
        for f in fields(cls):
            key = option_prefix(name) + f.name
            add_dataclass_flag(p, f, flag="--" + key.replace("_", "-"), dest=key,
                               help=f"{f.name} of defense {name!r} (see trustlab.training.defenses)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force-resume", action="store_true", help="resume even if the config changed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")


def run(args: argparse.Namespace) -> int:
    from trustlab.cli.config import load_toml
    from trustlab.compute import check_compute
    from trustlab.device import resolve_device
    from trustlab.distributed import distributed, from_env
    from trustlab.training import DEFENSES, TrainConfig, resolve_train_config, train_run
    from trustlab.training.defenses import option_prefix
    from trustlab.training.sharded import check_sync_batchnorm

    names = TrainConfig.field_names() + [option_prefix(n) + f.name for n, c in DEFENSES.items() for f in fields(c)]
    options = {**(load_toml(args.config, section="train") if args.config else {}), **given(args, names)}
    config = resolve_train_config(Path(args.out), options, resume=args.resume)
    check_compute(config.compute, resolve_device(config.device))  # bf16 or compile where unsupported: one line
    if config.sync_batchnorm:  # before the processes connect, so that each fails at once with the reason
        check_sync_batchnorm(resolve_device(config.device), from_env().world_size)
    with distributed(resolve_device(config.device)) as job:  # one process: no process group
        summary = train_run(config, Path(args.out), resume=args.resume, overwrite=args.overwrite,
                            force_resume=args.force_resume, progress=not args.quiet, job=job)
    if not job.is_main:
        return 0
    kept = summary.get("selected_epoch")
    metric = config.defense.selection_metric
    kept = f", weights of epoch {kept} (best {metric})" if config.keep_best and kept else ""
    print(f"{shown(args.out)}: test accuracy {summary['test_acc']:.4f} after {summary['epochs']} epochs{kept} "
          f"({summary['train_seconds']:.0f} s of training)")
    return 0
