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
- ``svm`` (``trustlab poison svm``, in an experiment folder): one row per attack step (``method`` ``gradient``,
  ``label_flip`` or ``clean``, ``point``, ``n_poison``, ``step``, ``val_error``, ``test_error``, ``x_norm``,
  ``moved``, ``final``): validation and test error against attack iterations and against the number of poison
  points (with label flipping), the poison images from the set's ``poisons.safetensors``, and a table across
  experiments (training-set sizes, kernels).
- ``frogs`` (``trustlab poison frogs``): one row per target/base pair (``success``, ``delta_l2``, ``delta_linf``,
  ``clean_acc_before``, ``clean_acc_after``): success rate with the perturbation sizes and the clean accuracy
  change, and a few base / poison / target images.
- ``frogs-end-to-end`` (``trustlab poison frogs --end-to-end``): one row per target (``success``,
  ``control_success``, ``clean_finetune_pred``, perturbation sizes over its K poisons, clean accuracies): the
  success rate next to the controls' (the same fine-tuning on the unperturbed watermarked bases, and on no
  additions), so that a success is attributable to the collision.

It adds no matrix column: a backdoor's ASR is not robust accuracy under an l_p threat model.

Reference:
    Gu et al. 2017, arXiv:1708.06733; Tran, Li & Madry 2018, arXiv:1811.00636; Chen et al. 2018,
    arXiv:1811.03728; Goldwasser et al. 2022, arXiv:2204.06974; Biggio, Nelson & Laskov 2012, arXiv:1206.6389;
    Shafahi et al. 2018, arXiv:1804.00792.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from trustlab.reports import plots
from trustlab.reports.body import Body, Fragment, slug
from trustlab.reports.kinds import RecordKind, RecordSet, ReportContext, ReportPart

__all__ = ["KIND", "POISONING_KEYS", "attack_success_rate", "clean_accuracy", "detection_recall",
           "detection_precision", "svm_errors_vs_steps", "svm_errors_vs_points", "frogs_success_rate",
           "frogs_success_rate_clean_correct", "frogs_control_success_rate"]

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


def svm_errors_vs_steps(records: Sequence[dict[str, Any]], key: str = "test_error") -> tuple[list[int], list[float]]:
    """``key`` of the gradient attack's rows in order, against the attack iteration counted over all points."""
    rows = [r for r in records if r["method"] == "gradient"]
    return list(range(len(rows))), [float(r[key]) for r in rows]


def svm_errors_vs_points(records: Sequence[dict[str, Any]], method: str = "gradient",
                         key: str = "test_error") -> tuple[list[int], list[float]]:
    """``key`` after each added point of ``method`` (``gradient`` or ``label_flip``), the clean SVM at 0."""
    rows = [r for r in records if r["method"] == "clean"]
    rows += sorted((r for r in records if r["method"] == method and r["final"]), key=lambda r: r["n_poison"])
    return [int(r["n_poison"]) for r in rows], [float(r[key]) for r in rows]


def frogs_success_rate(records: Sequence[dict[str, Any]]) -> float:
    """The fraction of target/base pairs whose target the poisoned model assigns to the base class.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("records is empty; can't compute the success rate")
    return sum(bool(r["success"]) for r in records) / len(records)


def frogs_success_rate_clean_correct(records: Sequence[dict[str, Any]]) -> float | None:
    """The success rate over the pairs whose target the clean model classified correctly (None when there are
    none): a target the clean model already put into the base class is no success of the poison."""
    rows = [r for r in records if r["clean_pred"] == r["y"]]
    return frogs_success_rate(rows) if rows else None


def frogs_control_success_rate(records: Sequence[dict[str, Any]]) -> float:
    """End to end: the fraction of targets the control (unperturbed watermarked bases) fine-tuning assigns to the
    base class.

    Raises:
        ValueError: no records.
    """
    if not records:
        raise ValueError("records is empty; can't compute the control success rate")
    return sum(bool(r["control_success"]) for r in records) / len(records)


def _poisons(s: RecordSet) -> dict[str, np.ndarray] | None:
    """The set's ``poisons.safetensors`` (a record file of images, not a model), or None when absent."""
    path = s.path / "poisons.safetensors"
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    return load_file(path)


def _svm(body: Body, i: int, run, s: RecordSet) -> dict[str, Any]:
    records = s.records
    pair = s.config["experiment"]["pair"]
    kernel = s.config["svm_poison"]["kernel"]
    name = f"{run.name}: {pair[0]} vs {pair[1]}, {kernel}, n={s.summary.get('n_train')}"
    starts = [k for k, r in enumerate(r for r in records if r["method"] == "gradient") if r["step"] == 0]
    curves = {"validation error": svm_errors_vs_steps(records, "val_error"),
              "test error": svm_errors_vs_steps(records, "test_error")}
    png = plots.plot_curves(curves, xlabel="attack iteration (all poison points in turn)", ylabel="error",
                            title=f"error vs attack iterations: {name}", vlines=starts[1:])
    body.figure(png, f"poisoning-svm-iterations-{slug(i, run.name, s.id)}.png", alt=f"SVM error vs iterations, {name}",
                caption="Validation (the attacker's objective set) and test error of the SVM retrained with the "
                        "poison point at each accepted gradient step; dotted lines: the next point starts.")
    curves = {"gradient: validation": svm_errors_vs_points(records, "gradient", "val_error"),
              "gradient: test": svm_errors_vs_points(records, "gradient", "test_error"),
              "label flip: test": svm_errors_vs_points(records, "label_flip", "test_error")}
    png = plots.plot_curves(curves, xlabel="poison points", ylabel="error", title=f"error vs poison points: {name}")
    body.figure(png, f"poisoning-svm-points-{slug(i, run.name, s.id)}.png", alt=f"SVM error vs points, {name}",
                caption="Error after each added poison point (0: the clean SVM), and the label-flipping baseline "
                        "with as many points.")
    poisons = _poisons(s)
    shape = s.config.get("image_shape")
    if poisons is not None and shape and len(shape) == 3 and int(np.prod(shape)) == poisons["x_poison"].shape[1]:
        k = min(_SHOWN, len(poisons["x_poison"]))
        x0, xp = (poisons[n][:k].reshape(k, *shape) for n in ("x_start", "x_poison"))
        titles = [(f"start: class {pair[0]}", f"poison {j}: label {int(poisons['y_poison'][j])}") for j in range(k)]
        png = plots.plot_examples(x0, xp, titles, title=f"poison points: {name}")
        body.figure(png, f"poisoning-svm-images-{slug(i, run.name, s.id)}.png", alt=f"SVM poison images, {name}",
                    caption="Each poison point's starting clone, the change and the final poison image.")
    test = svm_errors_vs_points(records)[1]
    if poisons is not None and "surface_error" in poisons:
        path = np.array([r["position"] for r in records if r["method"] == "gradient" and r["point"] == 0])
        png = plots.plot_path_on_surface(poisons["surface_grid"], poisons["surface_error"], path,
                                         x=poisons["x_train"], y=poisons["y_train"],
                                         title=f"first poison point's path: {name}")
        body.figure(png, f"poisoning-svm-path-{slug(i, run.name, s.id)}.png", alt=f"SVM poison path, {name}",
                    caption="The first poison point's path (red; star: the end) over the validation error of the SVM "
                            "retrained with the point at each place of the grid, and the clean training points.")
    flip = svm_errors_vs_points(records, "label_flip")[1]
    return {"run": run.name, "pair": f"{pair[0]} vs {pair[1]}", "kernel": kernel, "n train": s.summary.get("n_train"),
            "points": len(test) - 1, "clean test err": test[0], "1 point test err": test[1] if len(test) > 1 else None,
            "final test err": test[-1], "label flip test err": flip[-1] if len(flip) > 1 else None,
            "final val err": svm_errors_vs_points(records, key="val_error")[1][-1]}


def _frogs(body: Body, i: int, run, s: RecordSet) -> dict[str, Any]:
    records = s.records
    ok = [r for r in records if r["success"]]
    png = plots.plot_score_histogram({"success": [r["delta_l2"] for r in ok],
                                      "failure": [r["delta_l2"] for r in records if not r["success"]]},
                                     xlabel="poison perturbation l2 (to the base)", title=f"Poison Frogs: {run.name}")
    body.figure(png, f"poisoning-frogs-{slug(i, run.name, s.id)}.png", alt=f"Poison Frogs perturbations, {run.name}",
                caption="l2 size of each poison's perturbation from its base, successful vs failed pairs.")
    poisons = _poisons(s)
    if poisons is not None:
        k = min(_SHOWN, len(records))
        titles = [(f"base: class {r['base_class']}", f"poison (target class {r['y']}: "
                   f"{'flipped' if r['success'] else 'kept'})") for r in records[:k]]
        png = plots.plot_examples(poisons["base"][:k], poisons["x_poison"][:k], titles,
                                  title=f"Poison Frogs poisons: {run.name}")
        body.figure(png, f"poisoning-frogs-images-{slug(i, run.name, s.id)}.png", alt=f"poisons of {run.name}",
                    caption="Base images, the amplified perturbation and the poisons (clean label: the base class).")
    n = len(records)
    return {"run": run.name, "dataset": s.config.get("dataset"), "pairs": n, "success": frogs_success_rate(records),
            "clean-correct targets": sum(r["clean_pred"] == r["y"] for r in records),
            "success on them": frogs_success_rate_clean_correct(records),
            "l2 mean": sum(r["delta_l2"] for r in records) / n, "l2 max": max(r["delta_l2"] for r in records),
            "l_inf mean": sum(r["delta_linf"] for r in records) / n, "l_inf max": max(r["delta_linf"] for r in records),
            "clean acc before": records[0]["clean_acc_before"],
            "clean acc after": sum(r["clean_acc_after"] for r in records) / n}


def _frogs_end_to_end(run, s: RecordSet) -> dict[str, Any]:
    records = s.records
    n = len(records)
    finetune = s.config.get("finetune", {})
    return {"run": run.name, "dataset": s.config.get("dataset"), "targets": n, "poisons": s.config.get("poisons"),
            "opacity": s.config.get("collision", {}).get("opacity"), "beta0": s.config.get("collision", {}).get("beta0"),
            "n train": s.config.get("train_size"), "epochs": finetune.get("epochs"), "lr": finetune.get("lr"),
            "success": frogs_success_rate(records),
            "control success": frogs_control_success_rate(records),
            "no-addition success": sum(r["clean_finetune_pred"] == r["base_class"] for r in records) / n,
            "success on them": frogs_success_rate_clean_correct(records),
            "l2 mean": sum(r["delta_l2"] for r in records) / n, "l_inf max": max(r["delta_linf_max"] for r in records),
            "clean acc before": records[0]["clean_acc_before"],
            "clean acc after": sum(r["clean_acc_after"] for r in records) / n,
            "control acc after": sum(r["control_acc_after"] for r in records) / n}


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
    differ = sum(s.summary.get(k, 0) for k in ("a_differ_test", "a_differ_uniform", "a_differ_perturbed"))
    return {"run": run.name, "id": s.id, "n": n, "carrier pixels": s.summary.get("carrier_pixels"),
            "l_inf budget": s.summary.get("linf_budget"),
            "same logits (test)": sum(bool(r["same_logits"]) for r in s.records) / n,
            "activated to every label": sum(bool(r["activated_all"]) for r in s.records) / n,
            "max l_inf": max(float(r["max_linf"]) for r in s.records),
            "ms per activation": (1e3 * s.summary["b_seconds_per_input"] if "b_seconds_per_input" in s.summary
                                  else None),
            "differ / queries (random)": f"{differ} / {s.summary.get('a_queries')}",
            "differ / queries (PGD)": f"{s.summary.get('c_gradient_differ')} / {s.summary.get('c_gradient_queries')}"}


_PCT = {"success on them", "control success", "no-addition success", "control acc after", "clean test err", "1 point test err", "final test err", "label flip test err", "final val err", "success",
        "ASR", "clean acc", "baseline ASR", "baseline clean acc", "recall", "precision", "ASR before", "ASR after",
        "clean acc before", "clean acc after", "same logits (test)", "activated to every label"}


def _section(ctx: ReportContext) -> ReportPart:
    body = Body(ctx.out_dir)
    body.text("Attack success rate (ASR): the fraction of triggered test inputs whose true label is not the target "
              "that the model assigns to the target; always shown with clean accuracy and with the ASR of a "
              "clean-trained model as the baseline.")
    tables: dict[str, list[dict[str, Any]]] = {"backdoor": [], "defend": [], "signature": [], "svm": [], "frogs": [],
                                                "frogs-end-to-end": []}
    figures = Body(ctx.out_dir)  # drawn per run, shown after the tables
    for i, run in enumerate(ctx.runs):
        tables["signature"] += [_signature(s, run) for s in _sets(run, "signature")]
        tables["frogs-end-to-end"] += [_frogs_end_to_end(run, s) for s in _sets(run, "frogs-end-to-end")]
        if not any(_sets(run, a) for a in ("backdoor", "defend", "svm", "frogs")):
            continue
        figures.heading(run.name)
        tables["backdoor"] += [_backdoor(figures, i, run, s) for s in _sets(run, "backdoor")]
        tables["defend"] += [_defend(figures, i, run, s) for s in _sets(run, "defend")]
        tables["svm"] += [_svm(figures, i, run, s) for s in _sets(run, "svm")]
        tables["frogs"] += [_frogs(figures, i, run, s) for s in _sets(run, "frogs")]
    tables["svm"].sort(key=lambda r: (r["pair"], r["kernel"], r["n train"] or 0))
    columns = {"backdoor": ["run", "trigger", "rate", "mode", "target", "ASR", "clean acc", "baseline ASR",
                            "baseline clean acc"],
               "defend": ["run", "method", "flagged", "recall", "precision", "ASR before", "ASR after",
                          "clean acc before", "clean acc after"],
               "signature": ["run", "n", "carrier pixels", "l_inf budget", "same logits (test)",
                             "activated to every label", "max l_inf", "ms per activation", "differ / queries (random)",
                             "differ / queries (PGD)"],
               "svm": ["run", "pair", "kernel", "n train", "points", "clean test err", "1 point test err",
                       "final test err", "label flip test err", "final val err"],
               "frogs": ["run", "dataset", "pairs", "success", "clean-correct targets", "success on them", "l2 mean", "l2 max", "l_inf mean", "l_inf max",
                         "clean acc before", "clean acc after"],
               "frogs-end-to-end": ["run", "dataset", "targets", "poisons", "opacity", "beta0", "n train", "epochs", "lr",
                                    "success", "control success",
                                    "no-addition success", "success on them", "l2 mean", "l_inf max",
                                    "clean acc before", "clean acc after", "control acc after"]}
    titles = {"backdoor": "Backdoors", "defend": "Defenses (flag, remove, retrain)",
              "signature": "Signature backdoor (Goldwasser et al. 2022): no key-less query finds a difference; "
                           "that none can is EUF-CMA unforgeability of Ed25519, not this experiment",
              "svm": "SVM poisoning (Biggio et al. 2012): test error of the clean SVM, with one poison point and with "
                     "all of them, and label flipping with as many points; one row per experiment (training-set "
                     "sizes in order)",
              "frogs": "Poison Frogs (Shafahi et al. 2018), one clean-label poison per target: success rate, "
                       "perturbation size to the base, clean accuracy before and after (mean over pairs)",
              "frogs-end-to-end": "Poison Frogs end to end (Shafahi et al. 2018, Section 5): K watermarked poisons per "
                                  "target, the whole network fine-tuned; controls: the same fine-tuning on the "
                                  "unperturbed watermarked bases, and on no additions ('success on them': targets "
                                  "the model got right before fine-tuning)"}
    for name, rows in tables.items():
        if rows:
            body.text(titles[name])
            body.table(rows, columns[name], floatfmt={"rate": "g", "beta0": "g", "lr": "g", "l_inf budget": ".3g",
                                             "max l_inf": ".3g", "ms per activation": ".3g", "l2 mean": ".3f",
                                             "l2 max": ".3f", "l_inf mean": ".3f", "l_inf max": ".3f"},
                       percent=_PCT & set(columns[name]))
    body.extend(figures.part())
    return ReportPart(body.section("poisoning", "Data poisoning and backdoors"), {"poisoning": tables})


def _run_part(run, ctx: ReportContext) -> Fragment:
    body = Body()
    rows = [{"id": s.id, "action": s.config.get("action"), "n": len(s.records)} for s in run.views(KIND_NAME)]
    body.text("Poisoning record sets:")
    body.table(rows, ["id", "action", "n"])
    return body.part({"poisoning_sets": rows})


_ACTIONS = ("backdoor", "defend", "signature", "svm", "frogs", "frogs-end-to-end")


def _load(sets: tuple[RecordSet, ...]) -> tuple[RecordSet, ...]:
    """Record sets sorted by (action, id).

    Raises:
        ValueError: a ``config.json`` without ``action`` (the message names the file).
    """
    for s in sets:
        if s.config.get("action") not in _ACTIONS:
            raise ValueError(f"{s.path / 'config.json'} needs action {', '.join(_ACTIONS)}")
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
