"""A data step before batching: a transformation of a training run's training set, recorded with its indices.

Poisoning attacks use it to add poisoned points or to replace some (a backdoor's triggered copies, a feature
collision's poisons). The run's identity and data fingerprint cover the transformed set, and the run folder keeps
which indices were added and which replaced, so a report can tell poisoned examples from clean ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from trustlab.data.splits import Splits, fingerprint_of
from trustlab.runs.identity import config_hash

__all__ = ["TrainingSetTransform", "TransformedSet", "apply_transform"]


@dataclass(frozen=True)
class TransformedSet:
    """A transformed training set.

    Args:
        x, y: the new training examples.
        added: indices into the new set of examples that were not in the original one.
        replaced: indices into the new set of examples that replace the original example at the same index.
        info: anything else to record (JSON-safe), e.g. the target class of a backdoor.

    Shapes:
        x (N', *D), y (N',), added (A,), replaced (R,) int64.
    """

    x: Tensor
    y: Tensor
    added: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    replaced: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    info: dict[str, Any] = field(default_factory=dict)


class TrainingSetTransform(Protocol):
    """What a training run can be given: a named, configured, seeded map of the training set."""

    name: str

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> TransformedSet: ...

    def to_dict(self) -> dict[str, Any]: ...


def apply_transform(splits: Splits, transform: TrainingSetTransform, *,
                    generator: torch.Generator) -> tuple[Splits, dict[str, Any]]:
    """The splits with the training set transformed, and the record of what changed.

    The new fingerprint covers the transformed training set and the transform's configuration.

    Raises:
        ValueError: the transform returned tensors of another dtype, shape per example or label range, or
            indices outside the new set.
    """
    x, y = splits.train
    out = transform(x, y, generator=generator)
    if not isinstance(out, TransformedSet):
        raise ValueError(f"transform {transform.name!r} must return a TransformedSet, got {type(out).__name__}")
    if out.x.dtype != x.dtype or out.x.shape[1:] != x.shape[1:] or len(out.x) != len(out.y):
        raise ValueError(f"transform {transform.name!r} returned x {tuple(out.x.shape)} {out.x.dtype} and y "
                         f"{tuple(out.y.shape)}; expected (N, {', '.join(map(str, x.shape[1:]))}) {x.dtype} and (N,)")
    k = splits.info.num_classes
    if len(out.y) and (int(out.y.min()) < 0 or int(out.y.max()) >= k):
        raise ValueError(f"transform {transform.name!r} returned labels outside [0, {k})")
    for name in ("added", "replaced"):
        idx = getattr(out, name)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(out.x)):
            raise ValueError(f"transform {transform.name!r}: {name} indices must lie in [0, {len(out.x)})")
    config = transform.to_dict()
    fingerprint = config_hash({"data": fingerprint_of((out.x, out.y), splits.val, splits.test), "transform": config})
    record = {"transform": config, "n_train_before": len(x), "n_train": len(out.x),
              "added": out.added.tolist(), "replaced": out.replaced.tolist(), "info": out.info}
    return replace(splits, train=(out.x, out.y), fingerprint=fingerprint), record
