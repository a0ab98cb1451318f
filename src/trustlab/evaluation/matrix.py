"""The *training type x evaluation type* robustness matrix (Madry et al. 2018, Table 1 style), as one call.

``run_matrix`` trains (or reuses) one run per defense, evaluates each with every attack at the matrix eps, adds
the evaluations the diagnosis needs (an eps grid for the accuracy-vs-eps curves, PGD with twice the steps for
the convergence check), and builds the report from the records.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustlab.evaluation.attack_run import attack_run
from trustlab.reports.diagnosis import Flag, diagnose
from trustlab.reports.html import Section
from trustlab.reports.metrics import robustness_matrix
from trustlab.reports.report import build_report
from trustlab.reports.runs import load_runs
from trustlab.reports.tables import matrix_markdown
from trustlab.runs.folder import is_run, run_lock
from trustlab.threat import LpBall, parse_p
from trustlab.training.config import TrainConfig
from trustlab.training.defenses import DEFENSES, build_defense, split_prefixed
from trustlab.training.run import train_run
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["MatrixConfig", "MatrixResult", "EVAL_TYPES", "run_matrix", "matrix_configs"]

log = logging.getLogger(__name__)
EVAL_TYPES = ("clean", "fgsm", "pgd")


@dataclass(frozen=True)
class MatrixConfig:
    """Which runs to train and how to evaluate them."""

    eps: float = 0.3  # training and evaluation budget
    p: float = math.inf
    train: tuple[str, ...] = ("none", "fgsm", "pgd")  # defenses, one run each
    evals: tuple[str, ...] = EVAL_TYPES
    pgd_steps: int = 40  # evaluation PGD
    pgd_step_size: float | None = None  # None: 2.5 * eps / pgd_steps
    restarts: int = 1
    eps_grid: tuple[float, ...] | None = None  # None: eps * (1/4, 1/2, 3/4); () for no curves
    curve_subset: int | None = 1000  # test examples for the eps grid and the convergence check (None: all)
    eval_subset: int | None = None  # test examples for the matrix itself (None: all)
    convergence_check: bool = True  # PGD with 2 * pgd_steps at the same step size
    defense_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # {"pgd": {"steps": 7}}

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_nonneg_float(self.eps, "eps", positive=True))
        object.__setattr__(self, "p", parse_p(self.p))
        for name, allowed in (("train", DEFENSES), ("evals", EVAL_TYPES)):
            values = tuple(getattr(self, name))
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise ValueError(f"{name} must be a non-empty subset of {list(allowed)}, got {list(values)}")
            object.__setattr__(self, name, values)
        check_positive_int(self.pgd_steps, "pgd_steps")
        check_positive_int(self.restarts, "restarts")
        if self.pgd_step_size is not None:
            check_nonneg_float(self.pgd_step_size, "pgd_step_size", positive=True)
        for name in ("curve_subset", "eval_subset"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), name)
        if self.eps_grid is not None:
            grid = tuple(check_nonneg_float(e, "eps_grid value", positive=True) for e in self.eps_grid)
            object.__setattr__(self, "eps_grid", grid)
        stray = sorted(set(self.defense_options) - set(self.train))
        if stray:
            raise ValueError(f"defense_options name defenses {stray} that the matrix does not train "
                             f"(train = {list(self.train)})")
        for name in self.train:  # fail now, not after the first runs have trained
            build_defense(name, **self.defense_options.get(name, {}))

    def defense(self, name: str):
        """The configured defense of the row ``name``."""
        return build_defense(name, **self.defense_options.get(name, {}))

    @property
    def step_size(self) -> float:
        return self.pgd_step_size if self.pgd_step_size is not None else 2.5 * self.eps / self.pgd_steps

    def grid(self) -> tuple[float, ...]:
        grid = self.eps_grid if self.eps_grid is not None else tuple(self.eps * f for f in (0.25, 0.5, 0.75))
        return tuple(sorted(e for e in grid if not math.isclose(e, self.eps)))


@dataclass(frozen=True)
class MatrixResult:
    rows: list[dict[str, Any]]
    flags: list[Flag]
    markdown: str
    report: Path
    runs: list[Path]
    header: str

    def text(self) -> str:
        """What the CLI prints: the header, the Markdown matrix, the diagnosis, where the report is."""
        lines = [self.header, "", self.markdown, "", "Diagnosis:" if self.flags else "Diagnosis: no flag raised."]
        lines += [f"- [{f.code}] {f.run}: {f.message}" for f in self.flags]
        return "\n".join([*lines, "", f"Report: {self.report.resolve()}"])


def _train_or_reuse(config: TrainConfig, run: Path, *, progress: bool) -> Path:
    """Train ``run`` unless it already holds this exact config (then resume: a no-op when complete). A folder
    that is not a trustlab run is never overwritten (:func:`~trustlab.runs.folder.check_overwritable`)."""
    resume = is_run(run)
    train_run(config, run, resume=resume, overwrite=not resume and run.exists(), progress=progress)
    return run


def _evaluate(run: Path, mc: MatrixConfig, *, seed: int, progress: bool, device: str = "auto") -> None:
    pgd = {"steps": mc.pgd_steps, "step_size": mc.step_size, "restarts": mc.restarts}
    jobs: list[tuple[str, float, dict[str, Any], int | None]] = []
    if "fgsm" in mc.evals:
        jobs.append(("fgsm", mc.eps, {}, mc.eval_subset))
    if "pgd" in mc.evals:
        jobs.append(("pgd", mc.eps, pgd, mc.eval_subset))
        if mc.convergence_check:
            jobs.append(("pgd", mc.eps, {**pgd, "steps": 2 * mc.pgd_steps}, mc.curve_subset))
    for e in mc.grid():
        if "fgsm" in mc.evals:
            jobs.append(("fgsm", e, {}, mc.curve_subset))
        if "pgd" in mc.evals:  # same number of steps, step size scaled with eps
            jobs.append(("pgd", e, {**pgd, "step_size": mc.step_size * e / mc.eps}, mc.curve_subset))
    for name, eps, params, subset in jobs:
        attack_run(run, name, LpBall(eps, mc.p), params, subset=subset, seed=seed, progress=progress, reuse=True,
                   device=device)


def run_matrix(
    base: TrainConfig, mc: MatrixConfig, out: Path, *, progress: bool = True, extra_sections: tuple[Section, ...] = ()
) -> MatrixResult:
    """Train one run per defense in ``mc.train`` (``base`` with that defense and ``mc.eps``), evaluate, report.

    Runs live in ``out/train-<defense>``; an existing run with the same config is reused, a partial one resumed.
    The report (``out/report/report.html`` and ``report.md``) is rebuilt from the records alone.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # one matrix per folder; each run is locked again by train_run and attack_run
        runs = []
        for defense in mc.train:
            config = dataclasses.replace(base, defense=mc.defense(defense), eps=mc.eps, p=mc.p)
            run = _train_or_reuse(config, out / f"train-{defense}", progress=progress)
            _evaluate(run, mc, seed=base.seed, progress=progress, device=base.device)
            runs.append(run)
        views = load_runs(runs)
        rows = robustness_matrix(views, mc.evals, eps=mc.eps, p=mc.p)
        flags = diagnose(views)
        report = build_report(runs, out / "report", eps=mc.eps, p=mc.p,
                              title=f"trustlab robustness matrix ({base.dataset})", extra_sections=extra_sections)
    norm = "inf" if mc.p == math.inf else "2"
    n = rows[0]["n"] if rows else 0
    header = (f"Accuracy (%) on {n} {base.dataset} test images, l_{norm} eps = {mc.eps:g}; "
              f"PGD: {mc.pgd_steps} steps of {mc.step_size:g}, {mc.restarts} restart(s)")
    return MatrixResult(rows=rows, flags=flags, markdown=matrix_markdown(rows), report=report, runs=runs,
                        header=header)


_TRAIN_FLAGS = ("dataset", "model", "epochs", "subset", "seed", "root", "device")  # flags that set the training


def matrix_configs(recipe: Mapping[str, Any], flags: Mapping[str, Any]) -> tuple[TrainConfig, MatrixConfig]:
    """The training base and the matrix configuration from a recipe (``[train]`` and ``[matrix]`` tables) and
    command-line values (``None`` when not given), which override the recipe.

    Evaluation settings (``pgd_steps``, ``pgd_step_size``, ``restarts``...) go to the matrix only; a defense's own
    training settings are keys of ``[train]`` prefixed by its name (``pgd_steps = 7`` under ``[train]``). The
    matrix decides each run's defense, eps and p, so ``[train]`` may not set them.

    Raises:
        ValueError: an unknown table or key, or an invalid value.
    """
    unknown = sorted(set(recipe) - {"train", "matrix"})
    if unknown:
        raise ValueError(f"unknown tables {unknown} in the recipe; valid: ['train', 'matrix']")
    mfields = [f.name for f in dataclasses.fields(MatrixConfig) if f.name != "defense_options"]
    mvalues = {k.replace("-", "_"): v for k, v in dict(recipe.get("matrix", {})).items()}
    bad = sorted(set(mvalues) - set(mfields))
    if bad:
        raise ValueError(f"unknown [matrix] keys {bad}; valid: {mfields}")
    mvalues.update({k: v for k, v in flags.items() if k in mfields and v is not None})
    for key in ("train", "evals", "eps_grid"):
        if isinstance(mvalues.get(key), list):
            mvalues[key] = tuple(mvalues[key])
    tvalues, options = split_prefixed({k.replace("-", "_"): v for k, v in dict(recipe.get("train", {})).items()})
    fixed = sorted({"defense", "eps", "p"} & set(tvalues))
    if fixed:
        raise ValueError(f"[train] may not set {fixed}: the matrix trains one run per defense in its `train` list "
                         "at its own eps and p; set a defense's options with prefixed keys (pgd_steps = 7)")
    tvalues.update({k: v for k, v in flags.items() if k in _TRAIN_FLAGS and v is not None})
    mc = MatrixConfig(**mvalues, defense_options=options)
    return TrainConfig.from_dict({**tvalues, "eps": mc.eps, "p": mc.p}), mc
