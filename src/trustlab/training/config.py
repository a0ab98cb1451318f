"""``TrainConfig``: every knob of ``trustlab train``, validated, hashable into a run's identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from trustlab.threat import parse_p
from trustlab.training.defenses import DEFENSES
from trustlab.training.optimizers import OPTIMIZERS, SCHEDULES
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["TrainConfig", "config_hash"]


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults follow Wong et al. 2020's MNIST recipe (Adam, cyclic LR, batch 100)."""

    dataset: str = "digits"  # registry name in trustlab.data.DATASETS
    model: str = "cnn-small"  # registry name in trustlab.models.MODELS
    defense: str = "none"  # none | fgsm | fgsm-rs | pgd
    eps: float = 0.3  # training budget (ignored for defense = none)
    p: float = math.inf  # inf or 2
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"  # sgd | momentum | adam | adamw
    lr: float = 5e-3  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cyclic"  # constant | step | cosine | cyclic | one-cycle
    pgd_steps: int = 10  # inner PGD steps (defense = pgd)
    pgd_step_size: float | None = None  # inner step at full eps (scaled with eps in warm-up); None: 2.5 * eps / pgd_steps (pgd), 1.25 * eps (fgsm-rs)
    eps_warmup_epochs: int = 0  # linear ramp of eps from 0 over these epochs (0 = off)
    keep_best: bool = False  # end with the epoch of best validation PGD accuracy at full eps (early stopping)
    seed: int = 0
    val_size: int | None = None  # None: the dataset's default
    subset: int | None = None  # keep N train (and at most N val/test) examples
    eval_batch_size: int = 500
    root: str | None = None  # data root; None: $TRUSTLAB_DATA, then the user cache

    def __post_init__(self) -> None:
        if self.defense not in DEFENSES:
            raise ValueError(f"unknown defense {self.defense!r}; choose one of {list(DEFENSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")
        object.__setattr__(self, "p", parse_p(self.p))
        object.__setattr__(self, "eps", check_nonneg_float(self.eps, "eps"))
        object.__setattr__(self, "lr", check_nonneg_float(self.lr, "lr", positive=True))
        check_nonneg_float(self.momentum, "momentum")
        check_nonneg_float(self.weight_decay, "weight_decay")
        for name in ("epochs", "batch_size", "pgd_steps", "eval_batch_size"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.eps_warmup_epochs, "eps_warmup_epochs", minimum=0)
        check_positive_int(self.seed, "seed", minimum=0)
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be true or false, got {self.keep_best!r}")
        if self.keep_best and self.defense == "none":
            raise ValueError("keep_best selects by validation PGD accuracy, which only adversarial training "
                             "measures; got defense='none'")
        if self.pgd_step_size is not None:
            object.__setattr__(self, "pgd_step_size", check_nonneg_float(self.pgd_step_size, "pgd_step_size", positive=True))
        for name in ("val_size", "subset"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name, minimum=0 if name == "val_size" else 1)
        if self.defense != "none" and self.eps == 0:
            raise ValueError(f"defense {self.defense!r} needs eps > 0, got eps=0")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping (TOML file, JSON), rejecting unknown keys by name."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {cls.field_names()}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["p"] = "inf" if self.p == math.inf else self.p
        return d


def config_hash(values: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a config mapping."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
