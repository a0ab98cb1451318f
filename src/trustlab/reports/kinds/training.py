"""The ``training`` kind: the run root's own ``records.jsonl`` (clean test predictions) and ``summary.json``.

It fills the matrix's ``clean`` column and builds the training curves and the runs section (each run's facts and
configuration, followed by what every other kind adds to it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trustlab.reports import plots
from trustlab.reports.body import Body, slug
from trustlab.reports.kinds import Cell, RecordKind, ReportContext, ReportPart
from trustlab.reports.metrics import accuracy
from trustlab.reports.runs import CLEAN_KEYS, RunView

__all__ = ["KIND"]

_HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "train_clean_acc", "val_acc", "val_pgd_acc", "test_acc",
                    "generalization_gap", "train_eps", "lr", "epoch_seconds")
_HISTORY_PERCENT = {"train_acc", "train_clean_acc", "val_acc", "val_pgd_acc", "test_acc", "generalization_gap"}
_HISTORY_FMT = {"train_loss": ".4f", "train_eps": "g", "lr": ".3g", "epoch": "g"}
_CAPTION = ("Accuracy per epoch (train on the inputs trained on, i.e. adversarial ones for adversarial training; "
            "clean train; validation; validation PGD-10 at the epoch's eps; test) and the training loss.")
_CERTIFIED_CAPTION = ("Accuracy per epoch (train: verified on the training batches at the batch's eps; clean train; "
                      "validation; validation verified and PGD-10 at the epoch's eps; test) and the training loss.")


def _columns(runs: Sequence[RunView]) -> tuple[str, ...]:
    return ("clean",)


def _metrics(run: RunView, eps: float | None, p: float | None) -> dict[str, Cell]:
    return {"clean": Cell(accuracy(run.records, "correct"))}


def _training_section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    shown = 0
    for i, run in enumerate(ctx.runs):
        history = run.summary.get("history") or []
        if not history:
            continue
        body.heading(run.name)
        selected = run.summary.get("selected_epoch")
        png = plots.plot_training(history, title=f"training: {run.name} ({run.label})", selected=selected)
        check = "verified" if any("val_verified_acc" in h for h in history) else "PGD"  # certified training
        kept = (f" The run kept the weights of epoch {selected}, its best validation {check} accuracy at full eps."
                if selected is not None and selected != history[-1].get("epoch") else "")
        body.figure(png, f"training-{slug(i, run.name)}.png", alt=f"training curves of {run.name}",
                    caption=(_CERTIFIED_CAPTION if check == "verified" else _CAPTION) + kept)
        columns = [c for c in _HISTORY_COLUMNS if any(c in h for h in history)]
        extra = sorted({k for h in history for k in h if k.startswith("val_") and k.endswith("_acc")} - set(columns))
        at = columns.index("test_acc") if "test_acc" in columns else len(columns)
        columns = columns[:at] + extra + columns[at:]  # a defense's own validation checks, before test accuracy
        body.table(history, columns, floatfmt=_HISTORY_FMT, percent=_HISTORY_PERCENT | set(extra))
        shown += 1
    if not shown:
        body.text("No training history: no run has a summary.json with per-epoch history.")
    return ReportPart(body.section("training", "Training curves"))


def _runs_section(ctx: ReportContext) -> ReportPart:
    """Each run's facts and training configuration, then what every other kind in the report adds to it."""
    body = Body()
    entries = []
    for run in ctx.runs:
        body.heading(run.name)
        versions = run.config.get("versions", {})
        facts = {"path": str(run.path), "dataset": run.dataset, "n test": len(run.records),
                 "clean accuracy": f"{100 * accuracy(run.records):.2f}%", "training": run.label,
                 "config hash": run.config_hash, "train seconds": run.summary.get("train_seconds"),
                 **{f"{k} version": v for k, v in versions.items()}}
        body.table([{"field": k, "value": v} for k, v in facts.items()], ["field", "value"], floatfmt="g",
                   percent=False)
        body.text("Training configuration:")
        cfg = run.train_config
        body.table([{"field": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else v}
                    for k, v in cfg.items()], ["field", "value"], floatfmt="g", percent=False)
        entry: dict[str, Any] = {"name": run.name, "path": str(run.path), "config": cfg,
                                 "config_hash": run.config_hash, "versions": versions, "n": len(run.records),
                                 "clean_acc": accuracy(run.records)}
        for kind in ctx.kinds:
            if kind.run_part is None:
                continue
            part = kind.run_part(run, ctx)
            clash = sorted(set(part.data) & set(entry))
            if clash:
                raise ValueError(f"kind {kind.name!r} adds the run fields {clash}, which are already set")
            body.extend(part)
            entry.update(part.data)
        entries.append(entry)
    return ReportPart(body.section("runs", "Runs and hyperparameters"), {"runs": entries})


KIND = RecordKind(
    name="training",
    keys=CLEAN_KEYS,
    folder=None,  # the run root: config.json, records.jsonl, summary.json
    columns=_columns,
    metrics=_metrics,
    sections=(("training", _training_section), ("runs", _runs_section)),
    order=20,
    report_when_absent=True,
)
