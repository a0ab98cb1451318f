"""Poisons crafted elsewhere, appended to a training run's training set (a ``transform=`` for ``train_run``).

``trustlab poison svm`` and ``trustlab poison frogs`` save their poisons in a record set's ``poisons.safetensors``
(``x_poison`` and ``y_poison``, labels as the dataset's classes). :class:`AppendedPoisons` appends them to the
training set of any registry model's run: the run's ``data_transform.json`` then lists their indices under
``added`` and names the file with its sha256, so the poisoned run can be told apart from a clean one and rebuilt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trustlab.data.transform import TransformedSet

__all__ = ["AppendedPoisons"]


@dataclass(frozen=True)
class AppendedPoisons:
    """Append the poisons of a ``poisons.safetensors`` file (or of the record set folder holding one).

    Args:
        path: the file, or a record set folder with ``poisons.safetensors``.
        limit: append only the first ``limit`` poisons (all when None).

    Raises:
        FileNotFoundError: no such file.
    """

    path: str
    limit: int | None = None
    name: str = "appended-poisons"

    def _file(self) -> Path:
        p = Path(self.path)
        p = p / "poisons.safetensors" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"no poisons file at {p}")
        return p

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> TransformedSet:
        """The training set with the poisons appended (reshaped to the training inputs' shape).

        Raises:
            ValueError: the poisons' size per example differs from the training set's, or the file lacks
                ``x_poison`` / ``y_poison``.
        """
        from safetensors.torch import load_file

        data = load_file(self._file())
        if "x_poison" not in data or "y_poison" not in data:
            raise ValueError(f"{self._file()} needs x_poison and y_poison, has {sorted(data)}")
        xp, yp = data["x_poison"][: self.limit], data["y_poison"][: self.limit]
        if xp[0].numel() != x[0].numel():
            raise ValueError(f"poisons of {xp[0].numel()} values each do not fit training inputs of shape "
                             f"{tuple(x.shape[1:])}")
        xp = xp.reshape(len(xp), *x.shape[1:]).to(device=x.device, dtype=x.dtype)
        added = torch.arange(len(x), len(x) + len(xp), dtype=torch.int64)
        return TransformedSet(x=torch.cat([x, xp]), y=torch.cat([y, yp.to(y.device, y.dtype)]), added=added,
                              info={"poison_labels": yp.tolist(), "source": str(self._file())})

    def to_dict(self) -> dict[str, Any]:
        """The file's path and sha256 (the poisons' identity), and the limit."""
        digest = hashlib.sha256(self._file().read_bytes()).hexdigest()
        return {"name": self.name, "path": str(self._file()), "sha256": digest, "limit": self.limit}
