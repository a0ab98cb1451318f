"""Training on a registered defense's objective: ERM, FGSM, FGSM-RS, PGD and TRADES adversarial training."""

from trustlab.training.config import TrainConfig
from trustlab.training.defenses import DEFENSES, Defense, Objective, build_defense, register_defense
from trustlab.training.loop import EpochResult, train_epoch
from trustlab.training.optimizers import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from trustlab.training.run import resolve_train_config, train_run

__all__ = [
    "TrainConfig", "DEFENSES", "Defense", "Objective", "build_defense", "register_defense", "EpochResult",
    "train_epoch", "OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler", "train_run",
    "resolve_train_config",
]
