"""``TrainConfig``: every knob of ``trustlab train``, validated, hashable into a run's identity.

The defense is a registered configuration (:mod:`trustlab.training.defenses`) with its own settings. A mapping
(TOML, JSON) may give it as a table (``[train.defense]`` with ``name = "pgd"`` and ``steps = 10``), or as a name
plus keys prefixed by that name (``defense = "pgd"``, ``pgd_steps = 10``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from trustlab.compute import Compute
from trustlab.device import check_device
from trustlab.runs.identity import config_hash
from trustlab.threat import LpBall, parse_p
from trustlab.training.defenses import DEFENSES, Defense, build_defense, split_prefixed
from trustlab.training.defenses.erm import ERM
from trustlab.training.optimizers import OPTIMIZERS, SCHEDULES
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["TrainConfig", "config_hash", "NOT_IDENTITY", "ONLY_WHEN_SET"]

# where the data and the compute are, and how the compute is laid out (float rounding only, like the device):
# not part of what the run is. precision is, except fp32, left out so that older runs keep their identity.
NOT_IDENTITY = ("root", "device", "channels_last", "compile")
# options written into config.json, and so into the identity, only when set: older runs keep their hash
ONLY_WHEN_SET = ("sync_batchnorm",)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults follow Wong et al. 2020's MNIST recipe (Adam, cyclic LR, batch 100)."""

    dataset: str = "digits"  # registry name in trustlab.data.DATASETS
    model: str = "cnn-small"  # registry name in trustlab.models.MODELS
    defense: Defense = field(default_factory=ERM)  # a registered defense (a name or a table in TOML)
    eps: float = 0.3  # training budget (ignored by defenses that do not attack, such as none)
    p: float = math.inf  # inf or 2
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"  # sgd | momentum | adam | adamw
    lr: float = 5e-3  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cyclic"  # constant | step | cosine | cyclic | one-cycle
    eps_warmup_epochs: int = 0  # linear ramp of eps from 0 over these epochs (0 = off)
    keep_best: bool = False  # end with the epoch of best validation metric at full eps (early stopping)
    seed: int = 0
    val_size: int | None = None  # None: the dataset's default
    subset: int | None = None  # keep N train (and at most N val/test) examples
    eval_batch_size: int = 500
    root: str | None = None  # data root; None: $TRUSTLAB_DATA, then the user cache
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16: the forward passes under bf16 autocast (trustlab.compute)
    channels_last: bool = False  # channels-last memory format for the model and its 4-D inputs
    compile: bool = False  # torch.compile the model
    # under torchrun, BatchNorm on the global batch's statistics (torch.nn.SyncBatchNorm; GPUs only); a no-op on
    # one process. Without it each rank normalizes with its own slice's statistics
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "defense", build_defense(self.defense))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")
        object.__setattr__(self, "p", parse_p(self.p))
        object.__setattr__(self, "eps", check_nonneg_float(self.eps, "eps"))
        LpBall(self.eps, self.p)  # the same bounds as every attack's threat
        if self.root is not None:
            if not isinstance(self.root, (str, os.PathLike)):
                raise ValueError(f"root must be a folder path (a string), got {self.root!r}")
            object.__setattr__(self, "root", os.fspath(self.root))
        object.__setattr__(self, "lr", check_nonneg_float(self.lr, "lr", positive=True))
        check_nonneg_float(self.momentum, "momentum")
        check_nonneg_float(self.weight_decay, "weight_decay")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.eps_warmup_epochs, "eps_warmup_epochs", minimum=0)
        check_positive_int(self.seed, "seed", minimum=0)
        check_device(self.device)
        if not self.compute.is_default and self.defense.reads_layers:
            raise ValueError(f"defense {self.defense.name!r} computes certified bounds on the plain float32 "
                             f"model; precision {self.precision!r}, channels_last {self.channels_last} and "
                             f"compile {self.compile} are for defenses that only call the model (use the defaults)")
        for name in ("keep_best", "sync_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.keep_best and self.defense.selection_metric is None:
            raise ValueError(f"keep_best selects by a validation metric, which defense {self.defense.name!r} does "
                             "not measure")
        for name in ("val_size", "subset"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name, minimum=0 if name == "val_size" else 1)
        if self.defense.adversarial and self.eps == 0:
            raise ValueError(f"defense {self.defense.name!r} needs eps > 0, got eps=0")

    @property
    def compute(self) -> Compute:
        """How the run's forward passes are computed (validates the three settings)."""
        return Compute(self.precision, self.channels_last, self.compile)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping (TOML file, JSON), rejecting unknown keys by name.

        ``defense`` is a name, a ``{"name": ..., **options}`` table or a :class:`Defense`; keys prefixed by a
        defense's name (``pgd_steps``) set its options and must belong to the chosen defense.

        Raises:
            ValueError: an unknown key, an option of another defense, or an invalid value.
        """
        plain, prefixed = split_prefixed(values)
        unknown = sorted(set(plain) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {cls.field_names()} and a defense's "
                             f"options prefixed by its name ({', '.join(_option_examples())})")
        spec = plain.get("defense", "none")
        name = spec.name if isinstance(spec, Defense) else spec.get("name") if isinstance(spec, dict) else spec
        others = sorted(k for k in prefixed if k != name)
        if others:
            keys = [f"{k.replace('-', '_')}_{o}" for k in others for o in prefixed[k]]
            raise ValueError(f"config keys {keys} set options of defense(s) {others}, but the defense is {name!r}")
        defense = build_defense(spec, **prefixed.get(name, {})) if isinstance(name, str) else spec
        return cls(**{**plain, "defense": defense})

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a run's saved ``config.json["config"]``, also as written before defenses had their own
        settings (flat ``pgd_steps`` and ``pgd_step_size``, the latter also serving as the FGSM-RS step)."""
        return cls.from_dict(migrate_legacy(values))

    def to_dict(self) -> dict[str, Any]:
        """Every field, except those of :data:`ONLY_WHEN_SET` left at their default (false)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name not in ONLY_WHEN_SET or getattr(self, f.name)}
        d["defense"] = self.defense.to_dict()
        d["p"] = "inf" if self.p == math.inf else self.p
        return d

    def identity_dict(self) -> dict[str, Any]:
        """Every field that defines the run: all but the data root, the device, channels-last and compile, the
        precision only when it is not fp32 (:meth:`Compute.identity`), and ``sync_batchnorm`` only when set."""
        values = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY and k != "precision"}
        return {**values, **self.compute.identity()}

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def migrate_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """A config written before defenses had their own settings, in today's form (a no-op on today's)."""
    values = dict(values)
    if isinstance(values.get("defense"), dict) or not ({"pgd_steps", "pgd_step_size"} & set(values)):
        return values
    name = values.get("defense", "none")
    steps, step_size = values.pop("pgd_steps", None), values.pop("pgd_step_size", None)
    if name == "pgd":
        values["defense"] = {"name": "pgd", "steps": 10 if steps is None else steps, "step_size": step_size}
    elif name == "fgsm-rs":
        values["defense"] = {"name": "fgsm-rs", "step_size": step_size}
    return values


def _option_examples() -> list[str]:
    out = []
    for name, cls in DEFENSES.items():
        out += [f"{name.replace('-', '_')}_{f.name}" for f in fields(cls)]
    return out
