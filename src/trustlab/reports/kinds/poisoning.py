"""The ``poisoning`` kind: one record set per poisoning experiment ``RUN/poisoning/<id>/`` (``trustlab poison``).

Every row holds ``idx`` and ``y``; the set's ``config.json`` names its ``action``:

- ``backdoor``: one row per test example with ``pred``, ``pred_triggered``, ``baseline_pred``,
  ``baseline_pred_triggered``. ASR is the fraction of ``pred_triggered == target`` over rows with ``y != target``
  (POI-04); it is shown with clean accuracy and with the clean-trained baseline's ASR, and triggered example
  images (stored in the summary) are drawn next to their clean versions.
- ``defend``: one row per training point with ``poisoned``, ``score``, ``flagged``: recall and precision of the
  flags against the recorded poisons, a histogram of the scores of poisoned vs clean points, and the ASR and
  clean accuracy before and after retraining without the flagged points (from the summary: the retrained run is
  another run folder).
- ``signature``: one row per test example with ``same_logits``, ``activated_all``, ``max_linf``: the three checks
  of the signature backdoor.

It adds no matrix column: a backdoor's ASR is not robust accuracy under an l_p threat model.

Reference:
    Gu et al. 2017, arXiv:1708.06733; Tran, Li & Madry 2018, arXiv:1811.00636; Chen et al. 2018,
    arXiv:1811.03728; Goldwasser et al. 2022, arXiv:2204.06974.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trustlab.reports import plots
from trustlab.reports.body import Body, Fragment, slug
from trustlab.reports.kinds import RecordKind, RecordSet, ReportContext, ReportPart

__all__ = ["KIND", "POISONING_KEYS", "attack_success_rate", "clean_accuracy", "detection_recall",
           "detection_precision"]

POISONING_KEYS = ("idx", "y")
KIND_NAME = "poisoning"
_SHOWN = 4  # triggered examples drawn per backdoor evaluation


def attack_success_rate(records: Sequence[dict[str, Any]], target: int, *, key: str = "pred_triggered") -> float:
    """The fraction of rows with ``y != target`` whose ``key`` prediction is ``target``.

    Raises:
        ValueError: no row has ``y != target``.
    """
    rows = [r for r in records if r["y"] != target]
    if not rows:
        raise ValueError(f"no record has y != target {target}: ASR is undefined")
    return sum(r[key] == target for r in rows) / len(rows)


def clean_accuracy(records: Sequence[dict[str, Any]], *, key: str = "pred") -> float:
    """The fraction of rows whose ``key`` prediction equals ``y``.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("records is empty; can't compute clean accuracy")
    return sum(r[key] == r["y"] for r in records) / len(records)


def detection_recall(records: Sequence[dict[str, Any]]) -> float:
    """Flagged poisons over poisons (1.0 when nothing was poisoned)."""
    poisoned = [r for r in records if r["poisoned"]]
    return sum(bool(r["flagged"]) for r in poisoned) / len(poisoned) if poisoned else 1.0


def detection_precision(records: Sequence[dict[str, Any]]) -> float:
    """Poisons among the flagged points (1.0 when nothing was flagged)."""
    flagged = [r for r in records if r["flagged"]]
    return sum(bool(r["poisoned"]) for r in flagged) / len(flagged) if flagged else 1.0


def _sets(run, action: str) -> list[RecordSet]:
    return [s for s in run.views(KIND_NAME) if s.config.get("action") == action]


def _backdoor(body: Body, i: int, run, s: RecordSet) -> dict[str, Any]:
    target = int(s.config["poisoning"]["target"])
    row = {"run": run.name, "id": s.id, "trigger": s.config["poisoning"]["trigger"]["kind"],
           "rate": s.config["poisoning"]["rate"], "mode": s.config["poisoning"]["mode"], "target": target,
           "ASR": attack_success_rate(s.records, target), "clean acc": clean_accuracy(s.records),
           "baseline ASR": attack_success_rate(s.records, target, key="baseline_pred_triggered"),
           "baseline clean acc": clean_accuracy(s.records, key="baseline_pred")}
    ex = s.summary.get("examples")
    if ex:
        x, xt = np.asarray(ex["clean"])[:_SHOWN], np.asarray(ex["triggered"])[:_SHOWN]
        by_idx = {r["idx"]: r for r in s.records}
        titles = [(f"y={by_idx[j]['y']} pred {by_idx[j]['pred']}", f"triggered: pred {by_idx[j]['pred_triggered']}")
                  for j in ex["idx"][:len(x)]]
        png = plots.plot_examples(x, xt, titles, title=f"triggered test inputs: {run.name}")
        body.figure(png, f"poisoning-{slug(i, run.name, s.id)}.png", alt=f"triggered examples of {run.name}",
                    caption=f"Clean test inputs, the trigger (amplified difference) and the triggered inputs with "
                            f"the backdoored model's predictions (target {target}).")
    return row


def _defend(body: Body, i: int, run, s: RecordSet) -> dict[str, Any]:
    scores = {"poisoned": [r["score"] for r in s.records if r["poisoned"]],
              "clean": [r["score"] for r in s.records if not r["poisoned"]]}
    method = s.config["method"]
    png = plots.plot_score_histogram(scores, xlabel=f"{method} score", title=f"{method}: {run.name}")
    body.figure(png, f"poisoning-{slug(i, run.name, s.id)}.png", alt=f"{method} scores of {run.name}",
                caption=f"Outlier scores of the {method} defense, poisoned vs clean training points.")
    return {"run": run.name, "id": s.id, "method": method, "flagged": sum(bool(r["flagged"]) for r in s.records),
            "recall": detection_recall(s.records), "precision": detection_precision(s.records),
            "ASR before": s.summary.get("asr_before"), "ASR after": s.summary.get("asr_after"),
            "clean acc before": s.summary.get("clean_acc_before"), "clean acc after": s.summary.get("clean_acc_after")}


def _signature(s: RecordSet, run) -> dict[str, Any]:
    n = len(s.records)
    return {"run": run.name, "id": s.id, "n": n, "carrier pixels": s.summary.get("carrier_pixels"),
            "l_inf budget": s.summary.get("linf_budget"),
            "same logits (test)": sum(bool(r["same_logits"]) for r in s.records) / n,
            "activated to every label": sum(bool(r["activated_all"]) for r in s.records) / n,
            "max l_inf": max(float(r["max_linf"]) for r in s.records),
            "differ / queries (random)": f"{s.summary.get('a_differ_uniform', 0) + s.summary.get('a_differ_perturbed', 0)}"
                                         f" / {s.summary.get('a_queries')}",
            "differ / queries (PGD)": f"{s.summary.get('c_gradient_differ')} / {s.summary.get('c_gradient_queries')}"}


_PCT = {"ASR", "clean acc", "baseline ASR", "baseline clean acc", "recall", "precision", "ASR before", "ASR after",
        "clean acc before", "clean acc after", "same logits (test)", "activated to every label"}


def _section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    body.text("Attack success rate (ASR): the fraction of triggered test inputs whose true label is not the target "
              "that the model assigns to the target; always shown with clean accuracy and with the ASR of a "
              "clean-trained model as the baseline.")
    tables: dict[str, list[dict[str, Any]]] = {"backdoor": [], "defend": [], "signature": []}
    figures = Body(ctx.out_dir)  # drawn per run, shown after the tables
    for i, run in enumerate(ctx.runs):
        tables["signature"] += [_signature(s, run) for s in _sets(run, "signature")]
        if not (_sets(run, "backdoor") or _sets(run, "defend")):
            continue
        figures.heading(run.name)
        tables["backdoor"] += [_backdoor(figures, i, run, s) for s in _sets(run, "backdoor")]
        tables["defend"] += [_defend(figures, i, run, s) for s in _sets(run, "defend")]
    columns = {"backdoor": ["run", "trigger", "rate", "mode", "target", "ASR", "clean acc", "baseline ASR",
                            "baseline clean acc"],
               "defend": ["run", "method", "flagged", "recall", "precision", "ASR before", "ASR after",
                          "clean acc before", "clean acc after"],
               "signature": ["run", "n", "carrier pixels", "l_inf budget", "same logits (test)",
                             "activated to every label", "max l_inf", "differ / queries (random)",
                             "differ / queries (PGD)"]}
    titles = {"backdoor": "Backdoors", "defend": "Defenses (flag, remove, retrain)",
              "signature": "Signature backdoor (Goldwasser et al. 2022): no key-less query finds a difference; "
                           "that none can is EUF-CMA unforgeability of Ed25519, not this experiment"}
    for name, rows in tables.items():
        if rows:
            body.text(titles[name])
            body.table(rows, columns[name], floatfmt={"rate": "g", "l_inf budget": ".3g", "max l_inf": ".3g"},
                       percent=_PCT & set(columns[name]))
    body.extend(figures.part())
    return ReportPart(body.section("poisoning", "Data poisoning and backdoors"), {"poisoning": tables})


def _run_part(run, ctx: ReportContext) -> Fragment:
    body = Body()
    rows = [{"id": s.id, "action": s.config.get("action"), "n": len(s.records)} for s in run.views(KIND_NAME)]
    body.text("Poisoning record sets:")
    body.table(rows, ["id", "action", "n"])
    return body.part({"poisoning_sets": rows})


def _load(sets: tuple[RecordSet, ...]) -> tuple[RecordSet, ...]:
    """Record sets sorted by (action, id).

    Raises:
        ValueError: a ``config.json`` without ``action`` (the message names the file).
    """
    for s in sets:
        if s.config.get("action") not in ("backdoor", "defend", "signature"):
            raise ValueError(f"{s.path / 'config.json'} needs action backdoor, defend or signature")
    return tuple(sorted(sets, key=lambda s: (s.config["action"], s.id)))


KIND = RecordKind(
    name=KIND_NAME,
    keys=POISONING_KEYS,
    folder="poisoning",
    load=_load,
    sections=(("poisoning", _section),),
    run_part=_run_part,
    order=30,
)
