"""Read-only views of run folders: what a report needs, from ``config.json``, ``records.jsonl``, ``summary.json``.

A training run ``RUN/`` holds the clean test predictions; each attack evaluation ``RUN/attacks/<id>/`` holds one
row per attacked example. :func:`load_run` reads both into frozen values and never loads a model, so every table
and plot can be rebuilt from records alone (compute writes records; reports read records).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustlab.runs.records import read_json
from trustlab.threat import parse_p

__all__ = ["AttackView", "RunView", "load_run", "load_runs", "load_examples", "norm_label", "CLEAN_KEYS", "ATTACK_KEYS"]

CLEAN_KEYS = ("idx", "y", "pred", "correct")
ATTACK_KEYS = ("idx", "y", "pred", "correct", "adv_pred", "adv_correct", "robust")
_THREAT_FIELDS = ("attack", "eps", "p", "lower", "upper")  # not hyperparameters of the attack itself


@dataclass(frozen=True)
class AttackView:
    """One attack evaluation ``RUN/attacks/<id>/``.

    Args:
        id: the folder name, e.g. ``pgd-linf-eps0.3-steps40``.
        name: the attack's registry name (``"fgsm"``, ``"pgd"``, ``"linear"``).
        eps: the threat model's budget.
        p: the norm, ``math.inf`` or ``2.0``.
        threat: the threat model as written (``eps, p, lower, upper``).
        params: every hyperparameter of the attack except the threat model (steps, step size, restarts, loss...).
        seed: the evaluation seed.
        records: one row per example (``idx, y, pred, correct, adv_pred, adv_correct, robust, dist, ...``).
        summary: ``summary.json`` (empty if the evaluation did not finish writing it).
        config: the whole ``config.json``.
        path: the folder.
    """

    id: str
    name: str
    eps: float
    p: float
    threat: dict[str, Any]
    params: dict[str, Any]
    seed: int | None
    records: tuple[dict[str, Any], ...]
    summary: dict[str, Any]
    config: dict[str, Any]
    path: Path

    @property
    def n(self) -> int:
        """Number of attacked examples."""
        return len(self.records)

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``, for labels."""
        return norm_label(self.p)

    @property
    def examples_path(self) -> Path:
        """``examples.safetensors`` (may not exist)."""
        return self.path / "examples.safetensors"


@dataclass(frozen=True)
class RunView:
    """One training run folder and its attack evaluations.

    Args:
        name: a display name (the folder name, made unique by :func:`load_runs`).
        path: the folder.
        config: the whole ``config.json`` (``config``, ``identity``, ``versions``, ``dataset``).
        summary: ``summary.json`` (empty while a run is unfinished).
        records: the clean test predictions, one row per example.
        attacks: the attack evaluations, sorted by (name, p, eps, id).
    """

    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    attacks: tuple[AttackView, ...]

    @property
    def train_config(self) -> dict[str, Any]:
        """The resolved training configuration."""
        return dict(self.config.get("config", {}))

    @property
    def defense(self) -> str:
        """The training defense's name (``"none"``, ``"fgsm"``, ``"fgsm-rs"``, ``"pgd"``...).

        Reads both formats of ``config.json``: the name alone (``"defense": "pgd"``) and the defense with its
        parameters (``"defense": {"name": "pgd", "steps": 10, "step_size": null}``).
        """
        defense = self.train_config.get("defense", "none")
        if isinstance(defense, Mapping):
            return str(defense.get("name", "none"))
        return str(defense)

    @property
    def train_threat(self) -> tuple[float, float] | None:
        """The training config's budget ``(eps, p)`` as recorded (an undefended run may record one too); None
        when the config records no ``eps``.

        ``eps`` and ``p`` are read from the training config, else from the defense's own parameters.
        """
        cfg = self.train_config
        defense = cfg.get("defense")
        params = dict(defense) if isinstance(defense, Mapping) else {}
        eps = cfg.get("eps", params.get("eps"))
        if eps is None:
            return None
        return float(eps), parse_p(cfg.get("p", params.get("p", "inf")))

    @property
    def dataset(self) -> str:
        """The dataset's registry name."""
        return str(self.config.get("dataset", {}).get("name", self.train_config.get("dataset", "")))

    @property
    def num_classes(self) -> int:
        """Number of labels: from ``config.json``, else one more than the largest label seen."""
        k = self.config.get("dataset", {}).get("num_classes")
        if k is not None:
            return int(k)
        labels = [int(r["y"]) for r in self.records]
        return max(labels) + 1 if labels else 0

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names from the dataset registry; the label numbers when the dataset is not registered."""
        from trustlab.data import dataset_info

        try:
            names = dataset_info(self.dataset).class_names
        except ValueError:
            names = ()
        if len(names) != self.num_classes:
            names = tuple(str(i) for i in range(self.num_classes))
        return names

    @property
    def label(self) -> str:
        """How the training is shown in tables, e.g. ``pgd (linf eps=0.3)`` or ``none``."""
        threat = self.train_threat
        if self.defense == "none" or threat is None:
            return self.defense
        return f"{self.defense} ({norm_label(threat[1])} eps={threat[0]:g})"

    @property
    def config_hash(self) -> str | None:
        """The training config's hash from ``identity``, if written."""
        return self.config.get("identity", {}).get("config_hash")


def norm_label(p: float) -> str:
    """``math.inf`` -> ``"linf"``, ``2.0`` -> ``"l2"``."""
    return "linf" if p == math.inf else f"l{p:g}"


def load_run(path: str | Path, *, name: str | None = None) -> RunView:
    """Read the run folder ``path`` and every evaluation under ``path/attacks/``.

    Args:
        path: a training run folder (holding ``config.json`` and ``records.jsonl``).
        name: display name; defaults to the folder name.

    Returns:
        A :class:`RunView`; nothing is written and no model is loaded.

    Raises:
        FileNotFoundError: ``path``, its ``config.json`` or ``records.jsonl`` (or those of an attack folder)
            does not exist; the message names the path.
        ValueError: a file is not valid JSON, or a record lacks a required field (the message names the file
            and the line).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    config = _read_object(path / "config.json")
    records = _read_rows(path / "records.jsonl", CLEAN_KEYS)
    summary_path = path / "summary.json"
    summary = _read_object(summary_path) if summary_path.exists() else {}
    attack_root = path / "attacks"
    folders = sorted(p for p in attack_root.iterdir() if p.is_dir()) if attack_root.is_dir() else []
    attacks = sorted((_load_attack(f) for f in folders), key=lambda a: (a.name, a.p, a.eps, a.id))
    return RunView(name or path.name, path, config, summary, records, tuple(attacks))


def load_runs(paths: list[str | Path]) -> list[RunView]:
    """:func:`load_run` each path; folders with the same name are told apart by their parent's name."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    out = []
    for p in paths:
        name = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        out.append(load_run(p, name=name))
    return out


def _load_attack(folder: Path) -> AttackView:
    config = _read_object(folder / "config.json")
    records = _read_rows(folder / "records.jsonl", ATTACK_KEYS)
    summary_path = folder / "summary.json"
    summary = _read_object(summary_path) if summary_path.exists() else {}
    threat = dict(config.get("threat", {}))
    if "eps" not in threat:
        raise ValueError(f"{folder / 'config.json'} has no threat.eps")
    attack = dict(config.get("attack", {}))
    name = str(config.get("name", attack.get("attack", folder.name)))
    params = {k: v for k, v in attack.items() if k not in _THREAT_FIELDS}
    return AttackView(
        id=folder.name, name=name, eps=float(threat["eps"]), p=parse_p(threat.get("p", "inf")), threat=threat,
        params=params, seed=config.get("seed"), records=records, summary=summary, config=config, path=folder,
    )


def _read_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        obj = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return dict(obj)


def _read_rows(path: Path, required: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    rows = []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} line {line_no} is not valid JSON: {exc}") from None
        if not isinstance(row, Mapping):
            raise ValueError(f"{path} line {line_no} must hold a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path} line {line_no} lacks the fields {missing}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no records; a record set has one row per example")
    return tuple(rows)


def load_examples(attack: AttackView) -> dict[str, Any] | None:
    """The example grid of an evaluation as numpy arrays ``idx (k,), x (k, C, H, W), x_adv (k, C, H, W)``.

    Returns:
        The arrays, or None when ``examples.safetensors`` was not written.
    """
    if not attack.examples_path.is_file():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(attack.examples_path))
    missing = [k for k in ("idx", "x", "x_adv") if k not in tensors]
    if missing:
        raise ValueError(f"{attack.examples_path} lacks the tensors {missing}")
    return tensors
