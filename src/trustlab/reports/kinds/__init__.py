"""Record kinds: what a run folder may hold, how to read it, what it adds to the matrix and to the report.

A *record set* is one folder's ``config.json``, ``records.jsonl`` (one flat row per example) and optional
``summary.json``. A :class:`RecordKind` says where its record sets live in a run folder, which keys each row must
hold, how to turn them into views, which robustness-matrix columns it fills, and which report sections it builds.
:func:`~trustlab.reports.runs.load_run` reads every registered kind, :func:`~trustlab.reports.metrics.\
robustness_matrix` asks every kind for its cells, and :func:`~trustlab.reports.report.build_report` builds the
sections of the kinds present, in the kinds' fixed order. No model is ever loaded.

Today's kinds:

- ``training`` (:mod:`trustlab.reports.kinds.training`): the run root's own ``records.jsonl`` (clean test
  predictions) and ``summary.json`` (history): the ``clean`` column, the training curves, the runs section.
- ``attack`` (:mod:`trustlab.reports.kinds.attack`): one record set per ``RUN/attacks/<id>/``: the attack
  columns, the matrix, diagnosis, accuracy-vs-eps curves, per-class accuracy, example grids, and each run's
  attack tables in the runs section.
- ``certificate`` (:mod:`trustlab.reports.kinds.certificate`): one record set per ``RUN/certificates/<id>/``
  (``trustlab verify``): a ``certified-<method>`` column per bound method (a lower bound, outside the attack worst
  case), certified-vs-attack accuracy curves and table, and the EVAL-14 cross-check (certified but broken).
- ``smoothing`` (:mod:`trustlab.reports.kinds.smoothing`): one record set per ``RUN/smoothing/<id>/``
  (``trustlab smooth``): certified accuracy of the smoothed classifier against the radius per sigma, its table at
  radii 0..2 with the average certified radius, and the per-example guarantee and floating-point caveat.
- ``poisoning`` (:mod:`trustlab.reports.kinds.poisoning`): one record set per ``RUN/poisoning/<id>/``
  (``trustlab poison``): backdoor ASR, defenses, the signature backdoor, SVM poisoning, Poison Frogs.
- ``llm`` (:mod:`trustlab.reports.kinds.llm`): one record set per ``EXP/llm/<id>/`` (``trustlab llm
  attack|defend|eval``): GCG's success rate, steps, seconds and loss per step; SmoothLLM's jailbroken and
  answered rates against q per N and perturbation; the judge and its version; escaped example prompts.

Adding a kind takes one new module that defines ``KIND = RecordKind(...)`` and one line: its module name in
:data:`KIND_MODULES`. Code outside trustlab (and tests) can call :func:`register_kind` / :func:`unregister_kind`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trustlab.reports.body import Fragment
    from trustlab.reports.diagnosis import Flag
    from trustlab.reports.html import Section
    from trustlab.reports.runs import RunView

__all__ = [
    "RecordKind",
    "RecordSet",
    "Cell",
    "ReportContext",
    "ReportPart",
    "KIND_MODULES",
    "record_kinds",
    "builtin_kinds",
    "get_kind",
    "register_kind",
    "unregister_kind",
]

KIND_MODULES = ("trustlab.reports.kinds.training", "trustlab.reports.kinds.attack",
                "trustlab.reports.kinds.certificate", "trustlab.reports.kinds.smoothing",
                "trustlab.reports.kinds.poisoning", "trustlab.reports.kinds.llm")  # each defines KIND
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_registry: dict[str, RecordKind] = {}
_builtins: list[RecordKind] = []
_builtins_loaded = False

Record = Mapping[str, Any]


@dataclass(frozen=True)
class RecordSet:
    """One record set as read from a run folder.

    Args:
        kind: the kind's name.
        id: the folder name (``RUN/<kind folder>/<id>/``), or the run folder's name for the run root.
        path: the folder.
        config: its ``config.json``.
        records: its rows, each holding at least the kind's ``keys``.
        summary: its ``summary.json`` (empty when not written).
    """

    kind: str
    id: str
    path: Path
    config: dict[str, Any]
    records: tuple[dict[str, Any], ...]
    summary: dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One cell of the robustness matrix, as a kind's ``metrics`` computes it.

    Args:
        value: the accuracy shown (a fraction), or None when not measured.
        cases: the records of the attack evaluations behind an empirical cell, by evaluation id; the row's
            ``worst`` column is their per-example worst case over every column shown. Empty for a cell that is
            not an attack (clean accuracy, a certified lower bound), which stays out of ``worst``.
        notes: sentences for the row's ``notes`` (which evaluations were combined or left out).
    """

    value: float | None
    cases: Mapping[str, Sequence[Record]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportContext:
    """What every section builder gets.

    Args:
        runs: the runs, in the order given.
        threat: ``(eps, p)`` of the matrix, per-class bars and example grids; None when nothing was attacked.
        out_dir: the report folder (figures go to ``out_dir/figures/``, made on the first write).
        max_examples: adversarial examples shown per run.
        kinds: the kinds in this report, in their fixed order.
    """

    runs: tuple[RunView, ...]
    threat: tuple[float, float] | None
    out_dir: Path
    max_examples: int
    kinds: tuple[RecordKind, ...]


@dataclass(frozen=True)
class ReportPart:
    """A built section and the numbers behind it.

    Args:
        section: the section, in HTML and Markdown.
        data: JSON-ready values for ``report.json`` (top-level keys; two parts may not share a key).
    """

    section: Section
    data: Mapping[str, Any] = field(default_factory=dict)


def _no_columns(runs: Sequence[RunView]) -> tuple[str, ...]:
    return ()


def _no_metrics(run: RunView, eps: float | None, p: float | None) -> Mapping[str, Cell]:
    return {}


@dataclass(frozen=True)
class RecordKind:
    """A kind of record set: where it lives, what its rows hold, and what it adds to the matrix and the report.

    Args:
        name: a short lower-case name (``"attack"``); the key of :attr:`RunView.sets
            <trustlab.reports.runs.RunView.sets>`.
        keys: the fields every row of its ``records.jsonl`` must hold.
        folder: where its record sets live: None for the run root's own ``records.jsonl`` (one kind only, the
            training kind, whose view is the :class:`~trustlab.reports.runs.RunView` itself); otherwise one
            sub-folder per record set, ``RUN/<folder>/<id>/``.
        load: turns one run's record sets (sorted by folder name) into its views, in the order reports show
            them; None keeps the :class:`RecordSet` values as the views. Unused for the run root.
        columns: the robustness-matrix columns the kind adds by default, given the runs reported.
        metrics: ``(run, eps, p) -> {column: Cell}``: every matrix cell the kind can fill for a run at the threat
            model (``eps``, ``p`` may be None); a column it does not return is shown as not measured.
        sections: ``(id, build)`` pairs; ``build(ReportContext) -> ReportPart`` builds the section with that id.
        run_part: ``(run, ReportContext) -> Fragment``: what the kind adds to each run's entry of the runs
            section (its tables and numbers); None adds nothing.
        checks: the record checks the kind adds to the diagnosis, code -> description.
        flags: ``run -> flags``: the kind's checks on one run (:class:`~trustlab.reports.diagnosis.Flag` values);
            :func:`~trustlab.reports.diagnosis.diagnose_run` adds them to the run's flags. None adds nothing.
        order: reports build kinds by ascending ``order`` (then name), each kind's sections in their order.
        report_when_absent: build the sections even when no run holds a record set of this kind (they then say
            why they are empty); otherwise a kind no run holds adds nothing to a report.

    Raises:
        ValueError: an invalid name, folder, keys or section id, or a root kind with a loader.
    """

    name: str
    keys: tuple[str, ...]
    folder: str | None = None
    load: Callable[[tuple[RecordSet, ...]], tuple[Any, ...]] | None = None
    columns: Callable[[Sequence[RunView]], tuple[str, ...]] = _no_columns
    metrics: Callable[[RunView, float | None, float | None], Mapping[str, Cell]] = _no_metrics
    sections: tuple[tuple[str, Callable[[ReportContext], ReportPart]], ...] = ()
    run_part: Callable[[RunView, ReportContext], Fragment] | None = None
    checks: Mapping[str, str] = field(default_factory=dict)
    flags: Callable[[RunView], Sequence[Flag]] | None = None
    order: int = 100
    report_when_absent: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"kind name must be lower-case letters, digits, '-' or '_', got {self.name!r}")
        if self.folder is not None and (not isinstance(self.folder, str) or not _NAME.match(self.folder)):
            raise ValueError(f"folder must be one lower-case folder name or None, got {self.folder!r}")
        keys = tuple(self.keys)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"keys must name at least one field, got {self.keys!r}")
        object.__setattr__(self, "keys", keys)
        sections = tuple((sid, build) for sid, build in self.sections)
        ids = [sid for sid, _ in sections]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and i for i in ids):
            raise ValueError(f"section ids must be unique non-empty strings, got {ids}")
        object.__setattr__(self, "sections", sections)
        if self.folder is None and self.load is not None:
            raise ValueError(f"kind {self.name!r} reads the run root, whose view is the RunView; give load=None")
        if not isinstance(self.order, int) or isinstance(self.order, bool):
            raise ValueError(f"order must be an int, got {self.order!r}")

    @property
    def section_ids(self) -> tuple[str, ...]:
        """The ids of its sections, in order."""
        return tuple(sid for sid, _ in self.sections)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first, so a kind module that asks for the kinds while importing gets no loop
    try:
        for module in KIND_MODULES:
            kind = importlib.import_module(module).KIND  # sec03-allow: names from the fixed tuple KIND_MODULES
            _check_new(kind)
            _registry[kind.name] = kind
            _builtins.append(kind)
    except BaseException:
        for kind in _builtins:
            _registry.pop(kind.name, None)
        _builtins.clear()
        _builtins_loaded = False
        raise


def _check_new(kind: RecordKind) -> None:
    if not isinstance(kind, RecordKind):
        raise TypeError(f"kind must be a RecordKind, got {type(kind).__name__}")
    for other in _registry.values():
        if other.name == kind.name:
            raise ValueError(f"a kind named {kind.name!r} is already registered")
        if other.folder == kind.folder:
            where = "the run root" if kind.folder is None else f"RUN/{kind.folder}/"
            raise ValueError(f"kind {kind.name!r} reads {where}, which kind {other.name!r} already reads")
        clash = sorted(set(other.section_ids) & set(kind.section_ids))
        if clash:
            raise ValueError(f"kind {kind.name!r} builds the sections {clash}, which kind {other.name!r} builds")


def _ordered(kinds) -> tuple[RecordKind, ...]:
    return tuple(sorted(kinds, key=lambda k: (k.order, k.name)))


def builtin_kinds() -> tuple[RecordKind, ...]:
    """The kinds of :data:`KIND_MODULES`, in report order (registered or not)."""
    _load_builtins()
    return _ordered(_builtins)


def record_kinds() -> tuple[RecordKind, ...]:
    """Every registered kind, in report order (``order``, then name)."""
    _load_builtins()
    return _ordered(_registry.values())


def get_kind(name: str) -> RecordKind:
    """The registered kind ``name``.

    Raises:
        ValueError: no kind has that name (the message lists those that do).
    """
    _load_builtins()
    if name not in _registry:
        raise ValueError(f"unknown record kind {name!r}; registered: {sorted(_registry)}")
    return _registry[name]


def register_kind(kind: RecordKind) -> RecordKind:
    """Add ``kind`` to the registry: runs loaded from now on read its record sets, and reports show them.

    Returns:
        ``kind``.

    Raises:
        TypeError: ``kind`` is not a :class:`RecordKind`.
        ValueError: its name, folder or a section id is already taken by a registered kind.
    """
    _load_builtins()
    _check_new(kind)
    _registry[kind.name] = kind
    return kind


def unregister_kind(name: str) -> RecordKind:
    """Remove the kind ``name``; runs loaded from now on ignore its folders.

    Returns:
        The removed kind.

    Raises:
        ValueError: no kind has that name, or it is the run root's kind (a run can't be read without it).
    """
    kind = get_kind(name)
    if kind.folder is None:
        raise ValueError(f"kind {name!r} reads the run root and can't be unregistered")
    return _registry.pop(name)
