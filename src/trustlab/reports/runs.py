"""Read-only views of run folders: what a report needs, from ``config.json``, ``records.jsonl``, ``summary.json``.

A training run ``RUN/`` holds the clean test predictions; each attack evaluation ``RUN/attacks/<id>/`` holds one
row per attacked example; a kind registered later (certificates, say) keeps its record sets in its own folder.
:func:`load_run` reads the record sets of every registered :class:`~trustlab.reports.kinds.RecordKind` into frozen
values and never loads a model, so every table and plot can be rebuilt from records alone (compute writes
records; reports read records).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trustlab.reports.kinds import RecordKind, RecordSet, record_kinds
from trustlab.runs.records import read_json
from trustlab.threat import parse_p

__all__ = ["BPDA_SUFFIX", "AttackView", "RunView", "load_run", "load_runs", "load_examples", "attack_views", "read_record_set",
           "norm_label", "CLEAN_KEYS", "ATTACK_KEYS", "ATTACK_KIND"]

CLEAN_KEYS = ("idx", "y", "pred", "correct")
ATTACK_KEYS = ("idx", "y", "pred", "correct", "adv_pred", "adv_correct", "robust")
log = logging.getLogger(__name__)
ATTACK_KIND = "attack"  # the name of the attack evaluations' kind, whose views RunView.attacks returns
_THREAT_FIELDS = ("attack", "eps", "p", "lower", "upper")  # not hyperparameters of the attack itself
BPDA_SUFFIX = "+bpda"  # appended to the name of an evaluation run through BPDA (config ``bpda: true``)
CHECKS_FILE = "checks.json"  # an attack evaluation's model-level checks (optional)


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
        checks: ``checks.json``: the model-level checks run at attack time (``n``, ``checks`` (code ->
            description), ``flags``), see :mod:`trustlab.evaluation.checks`; empty for an evaluation without one.
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
    checks: dict[str, Any] = field(default_factory=dict)

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


@dataclass(frozen=True, init=False)
class RunView:
    """One training run folder and the record sets under it, per kind.

    The run root is the training kind's record set (``config``, ``records``, ``summary``); the record sets of
    every other kind are in ``sets``, keyed by kind name.

    Args:
        name: a display name (the folder name, made unique by :func:`load_runs`).
        path: the folder.
        config: the whole ``config.json`` (``config``, ``identity``, ``versions``, ``dataset``).
        summary: ``summary.json`` (empty while a run is unfinished).
        records: the clean test predictions, one row per example.
        attacks: the attack evaluations, sorted by (name, p, eps, id): the same as ``sets={"attack": ...}``.
        sets: kind name -> that kind's views, in the kind's order; kinds without a record set are left out.
        left_out: one message per record set computed on another checkpoint than the run's records (an attack
            taken while the model was still training, say); such sets are in no table.

    Raises:
        ValueError: the attack views are given both as ``attacks`` and in ``sets``.
    """

    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    sets: Mapping[str, tuple[Any, ...]]
    left_out: tuple[str, ...]

    def __init__(
        self,
        name: str,
        path: Path,
        config: dict[str, Any],
        summary: dict[str, Any],
        *,
        records: tuple[dict[str, Any], ...],
        attacks: tuple[AttackView, ...] = (),
        sets: Mapping[str, tuple[Any, ...]] | None = None,
        left_out: tuple[str, ...] = (),
    ) -> None:
        sets = {str(k): tuple(v) for k, v in (sets or {}).items()}
        if attacks:
            if sets.get(ATTACK_KIND):
                raise ValueError("give the attack views as attacks= or as sets['attack'], not both")
            sets[ATTACK_KIND] = tuple(attacks)
        for key, value in (("name", name), ("path", path), ("config", config), ("summary", summary),
                           ("records", tuple(records))):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "sets", MappingProxyType({k: v for k, v in sets.items() if v}))
        object.__setattr__(self, "left_out", tuple(left_out))

    @property
    def attacks(self) -> tuple[AttackView, ...]:
        """The attack evaluations (the ``attack`` kind's views), sorted by (name, p, eps, id)."""
        return self.sets.get(ATTACK_KIND, ())

    def views(self, kind: str) -> tuple[Any, ...]:
        """The views of kind ``kind`` (empty when the run has none)."""
        return self.sets.get(kind, ())

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
    """Read the run folder ``path`` and the record sets of every registered kind under it.

    The run root is the training kind's record set; each other kind's record sets are the sub-folders of
    ``path/<its folder>/`` (``path/attacks/<id>/`` for attack evaluations). Folders of kinds that are not
    registered are ignored.

    Args:
        path: a training run folder (holding ``config.json`` and ``records.jsonl``).
        name: display name; defaults to the folder name.

    Returns:
        A :class:`RunView`; nothing is written and no model is loaded.

    Raises:
        FileNotFoundError: ``path``, its ``config.json`` or ``records.jsonl`` (or those of a record set's
            folder) does not exist; the message names the path.
        ValueError: a file is not valid JSON, a records file is empty, or a record lacks a required field (the
            message names the file and the line).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    kinds = record_kinds()
    root = read_record_set(next(k for k in kinds if k.folder is None), path)
    sets, left_out = {}, []
    current = _run_checkpoint(path, root.summary)
    for kind in kinds:
        if kind.folder is None or not (path / kind.folder).is_dir():
            continue
        # a hidden folder is a result still being written (or left by a kill), never a committed one
        found = tuple(read_record_set(kind, f) for f in sorted((path / kind.folder).iterdir())
                      if f.is_dir() and not f.name.startswith("."))
        other = [s for s in found if not _same_checkpoint(_set_checkpoint(s), current)]
        for s in other:
            left_out.append(f"{path}: {kind.folder}/{s.id} was computed on checkpoint "
                            f"{_describe(_set_checkpoint(s))}, not on {_describe(current)} as the run's records; "
                            "left out (evaluate the run again to include it)")
            log.warning("%s", left_out[-1])
        found = tuple(s for s in found if s not in other)
        sets[kind.name] = tuple(kind.load(found)) if kind.load is not None else found
    return RunView(name or path.name, path, root.config, root.summary, records=root.records, sets=sets,
                   left_out=tuple(left_out))


def _run_checkpoint(path: Path, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint the run's own records were computed on: named in ``summary.json``, else (a run written
    before it was) the latest one; ``None`` when neither can be told."""
    ref = summary.get("checkpoint")
    if isinstance(ref, Mapping):
        return dict(ref)
    try:  # read as JSON, not through trustlab.checkpoint: a report imports no checkpoint or model code
        name = read_json(path / "checkpoints" / "latest.json")["name"]
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            return None
        sha = read_json(path / "checkpoints" / str(name) / "manifest.json")["files"]["model.safetensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"name": name, "sha256": sha}


def _set_checkpoint(s: RecordSet) -> dict[str, Any] | None:
    """The checkpoint a record set names: ``config.json``'s ``checkpoint``, or an older ``summary.json``'s name."""
    ref = s.config.get("checkpoint")
    if isinstance(ref, Mapping):
        return dict(ref)
    name = s.summary.get("checkpoint")
    return {"name": name, "sha256": s.summary.get("checkpoint_sha256")} if isinstance(name, str) else None


def _same_checkpoint(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Same weights (by sha256 when both have one, else by name); a set or run that names none is kept."""
    if a is None or b is None:
        return True
    if a.get("sha256") and b.get("sha256"):
        return a["sha256"] == b["sha256"]
    return a.get("name") == b.get("name")


def _describe(ref: Mapping[str, Any] | None) -> str:
    sha = (ref or {}).get("sha256")
    return f"{(ref or {}).get('name')}" + (f" (sha256 {sha[:12]})" if sha else "")


def load_runs(paths: list[str | Path]) -> list[RunView]:
    """:func:`load_run` each path; folders with the same name are told apart by their parent's name."""
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    out = []
    for p in paths:
        name = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        out.append(load_run(p, name=name))
    return out


def read_record_set(kind: RecordKind, folder: str | Path) -> RecordSet:
    """Read one record set of ``kind``: ``folder``'s ``config.json``, ``records.jsonl`` and ``summary.json``.

    Raises:
        FileNotFoundError: ``config.json`` or ``records.jsonl`` does not exist.
        ValueError: a file is not valid JSON, ``records.jsonl`` is empty, or a row lacks one of ``kind.keys``;
            the message names the file (and the line).
    """
    folder = Path(folder)
    config = _read_object(folder / "config.json")
    records = _read_rows(folder / "records.jsonl", kind.keys)
    summary_path = folder / "summary.json"
    summary = _read_object(summary_path) if summary_path.exists() else {}
    return RecordSet(kind=kind.name, id=folder.name, path=folder, config=config, records=records, summary=summary)


def attack_views(sets: tuple[RecordSet, ...]) -> tuple[AttackView, ...]:
    """The attack kind's loader: one :class:`AttackView` per evaluation, sorted by (name, p, eps, id).

    Raises:
        ValueError: a ``config.json`` records no ``threat.eps`` (the message names it).
    """
    return tuple(sorted((_attack_view(s) for s in sets), key=lambda a: (a.name, a.p, a.eps, a.id)))


def _attack_view(s: RecordSet) -> AttackView:
    threat = dict(s.config.get("threat", {}))
    if "eps" not in threat:
        raise ValueError(f"{s.path / 'config.json'} has no threat.eps")
    attack = dict(s.config.get("attack", {}))
    name = str(s.config.get("name", attack.get("attack", s.id)))
    if s.config.get("bpda") is True:
        name += BPDA_SUFFIX  # its own column: through BPDA an attack sees gradients the plain one does not
    params = {k: v for k, v in attack.items() if k not in _THREAT_FIELDS}
    return AttackView(
        id=s.id, name=name, eps=float(threat["eps"]), p=parse_p(threat.get("p", "inf")), threat=threat,
        params=params, seed=s.config.get("seed"), records=s.records, summary=s.summary, config=s.config,
        path=s.path, checks=_read_object(s.path / CHECKS_FILE) if (s.path / CHECKS_FILE).is_file() else {},
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
