"""Empirical risk minimization and adversarial training (FGSM, FGSM with random start, PGD)."""

from trustlab.training.config import TrainConfig
from trustlab.training.defenses import DEFENSES, make_inner_max
from trustlab.training.loop import EpochResult, accuracy, train_epoch
from trustlab.training.optimizers import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from trustlab.training.run import train_run

__all__ = [
    "TrainConfig", "DEFENSES", "make_inner_max", "EpochResult", "accuracy", "train_epoch",
    "OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "train_run",
]
