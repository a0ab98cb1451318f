"""LLM experiment folders: where ``trustlab llm attack|defend|eval`` commit their record sets, and what they read.

An experiment folder ``EXP/`` is a run-like folder (marker kind ``llm``) that ``trustlab report EXP`` reads:

- ``EXP/llm/<action>-<hash>/`` (action ``attack``, ``defend`` or ``eval``): one record set per command,
  committed in one rename (:func:`~trustlab.evaluation.record_set.commit_record_set`). ``<hash>`` is the first
  10 hex digits of the sha256 of the set's ``config.json`` without ``versions`` and ``sources``: the same
  command on the same inputs (prompts compared by content) replaces its set, any other adds one, so several
  commands build one experiment.
- ``EXP/config.json``, ``EXP/records.jsonl``, ``EXP/summary.json``: rebuilt from every set after each commit
  (:func:`~trustlab.reports.kinds.llm.experiment_rows`): one row per prompt of each set, the undefended model's
  behaviour (``pred``: 0 refused, 1 answered) against what a safe model does (``y``), ``correct`` when they agree.

A folder that exists must be empty or an LLM experiment; a training run or any other non-empty folder is refused
before a model is loaded. Commits hold the folder's lock (:func:`~trustlab.runs.folder.run_lock`).

Prompt sources of ``defend`` and ``eval`` (:func:`attack_set_of`): an attack record set ``EXP/llm/attack-<hash>/``
or an experiment folder holding exactly one attack set (each goal with its suffix, kind ``attacked``, and alone,
kind ``goal``); CSV files are read by :func:`~trustlab.evaluation.llm_run.read_prompts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustlab.evaluation.record_set import commit_record_set
from trustlab.reports.kinds import get_kind
from trustlab.reports.kinds.llm import ACTIONS, HARMFUL_KINDS, LABELS, experiment_rows
from trustlab.reports.runs import read_record_set
from trustlab.runs import config_hash, read_json, versions, write_json, write_records
from trustlab.runs.folder import LOCK, read_marker, run_lock, write_marker

__all__ = ["LLM_DIR", "EXPERIMENT_KIND", "check_experiment", "is_experiment", "set_id", "commit_llm_set",
           "llm_sets", "attack_set_of"]

LLM_DIR = "llm"
EXPERIMENT_KIND = "llm"  # the marker's kind
_UNHASHED = ("versions", "sources")


def is_experiment(folder: Path) -> bool:
    """Whether ``folder`` carries trustlab's marker with kind ``llm``."""
    marker = read_marker(folder) if Path(folder).is_dir() else None
    return marker is not None and marker.get("kind") == EXPERIMENT_KIND


def check_experiment(folder: str | Path) -> Path:
    """``folder`` as a path if it can be an LLM experiment folder: absent, empty, or one already.

    Raises:
        FileExistsError: it is a file, a trustlab run of another kind, or a non-empty folder without the marker
            (the message names it).
    """
    folder = Path(folder)
    if not folder.exists() or is_experiment(folder):
        return folder
    if not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; --out must be an LLM experiment folder")
    marker = read_marker(folder)
    if marker is not None:
        raise FileExistsError(f"{folder} is a trustlab {marker.get('kind')} run, not an LLM experiment folder; "
                              "give another --out")
    if any(p.name != LOCK for p in folder.iterdir()):  # the lock alone: a first commit under way or killed
        raise FileExistsError(f"{folder} is not empty and not an LLM experiment folder (no {EXPERIMENT_KIND} "
                              "marker); give a new or empty folder as --out")
    return folder


def set_id(action: str, config: Mapping[str, Any]) -> str:
    """``<action>-<hash>``: the hash of ``config`` without versions and sources.

    Raises:
        ValueError: an unknown action.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    return f"{action}-{config_hash({k: v for k, v in config.items() if k not in _UNHASHED})[:10]}"


def llm_sets(folder: str | Path) -> list:
    """The committed record sets of the experiment ``folder``, sorted by folder name (hidden ones are unfinished)."""
    root = Path(folder) / LLM_DIR
    if not root.is_dir():
        return []
    kind = get_kind("llm")
    return [read_record_set(kind, f) for f in sorted(root.iterdir()) if f.is_dir() and not f.name.startswith(".")]


def commit_llm_set(folder: str | Path, action: str, config: Mapping[str, Any], files: Mapping[str, Any]) -> Path:
    """Commit one record set into the experiment ``folder`` (made if absent) and rebuild its root records.

    Args:
        folder: the experiment folder.
        action: ``attack``, ``defend`` or ``eval`` (written into the set's ``config.json``).
        config: the set's ``config.json`` (without ``action``); its hash names the set.
        files: the other files, ``records.jsonl`` first and ``summary.json`` last.

    Returns:
        The set's folder, ``folder/llm/<action>-<hash>``.

    Raises:
        FileExistsError: ``folder`` can't be an LLM experiment (see :func:`check_experiment`).
        RunInUseError: another process holds its lock.
    """
    folder = check_experiment(folder)
    config = {"action": action, **config}
    out = folder / LLM_DIR / set_id(action, config)
    folder.mkdir(parents=True, exist_ok=True)
    with run_lock(folder):
        check_experiment(folder)  # again under the lock: another command may have written meanwhile
        if not is_experiment(folder):
            write_marker(folder, kind=EXPERIMENT_KIND)
        commit_record_set(out, {"config.json": config, **files})
        _write_root(folder)
    return out


def _write_root(folder: Path) -> None:
    sets = llm_sets(folder)
    rows = experiment_rows(sets)
    write_json(folder / "config.json", {
        "config": {"experiment": "llm", "defense": "none", "sets": [s.id for s in sets],
                   "labels": list(LABELS), "refused_kinds": list(HARMFUL_KINDS),
                   "records": "one row per prompt of each set: the undefended model's behaviour (pred: 0 refused, "
                              "1 answered; GCG's target for attack sets, the judge for the others) against a safe "
                              "model's (y); correct when they agree"},
        "dataset": {"name": "llm-prompts", "num_classes": len(LABELS)}, "versions": versions()})
    write_records(folder / "records.jsonl", rows)
    write_json(folder / "summary.json", {"sets": [s.id for s in sets], "n_prompts": len(rows),
                                         "safe_rate": sum(r["correct"] for r in rows) / len(rows) if rows else None})


def attack_set_of(path: str | Path) -> Path | None:
    """The attack record set a prompt source names: the folder itself if it is one (its ``config.json`` has action
    ``attack``, or kind ``llm-attack`` as written before experiment folders), an experiment's only attack set;
    None when ``path`` is not a folder.

    Raises:
        ValueError: an experiment folder with no attack set or several (their paths named), or a folder that is
            neither an experiment nor an attack set.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if is_experiment(path):
        found = sorted(p for p in (path / LLM_DIR).glob("attack-*") if p.is_dir())
        if len(found) != 1:
            listed = ", ".join(str(p) for p in found) or "none"
            raise ValueError(f"{path} must hold exactly one attack set to read prompts from, it holds {listed}; "
                             "give the attack set's folder")
        return found[0]
    config = path / "config.json"
    c = read_json(config) if config.is_file() else {}
    if isinstance(c, Mapping) and (c.get("action") == "attack" or c.get("kind") == "llm-attack"):
        return path
    raise ValueError(f"{path} is neither an LLM experiment folder nor an attack record set")
