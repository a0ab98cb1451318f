"""SVM poisoning experiments (Biggio, Nelson & Laskov 2012) as an experiment folder with a poisoning record set.

``svm_poisoning_run(out, pair=(7, 1), n_points=10, ...)`` draws, from MNIST (or any registered image dataset) and
without overlap, a small training set and the attacker's validation set from the training split, and takes the
test set from the test split (the paper: 100 training and 500 validation digits from MNIST's training data, the
two classes' digits of the test data as the test set). It trains the clean SVM, adds ``n_points`` poison points
one at a time by :func:`~trustlab.poisoning.svm.svm_poison`, measures the label-flipping baseline with as many
points, and writes

- ``OUT/`` as a run-like folder (marker kind ``poison-svm``): ``config.json`` (the experiment's configuration
  under ``config``), ``records.jsonl`` (the clean SVM's test predictions, labels as the dataset's classes) and
  ``summary.json``, so that ``trustlab report OUT`` reads it like a training run;
- ``OUT/poisoning/svm-<hash>/``: ``config.json`` (``action: "svm"``), ``records.jsonl`` with one row per attack
  step (see :data:`ROW_FIELDS`), ``poisons.safetensors`` (the poison points, their starting clones and labels)
  and ``summary.json``, committed in one rename (:func:`~trustlab.evaluation.record_set.commit_record_set`).

Reference:
    B. Biggio, B. Nelson, P. Laskov. Poisoning Attacks against Support Vector Machines. ICML 2012,
    arXiv:1206.6389, Section 5 (MNIST) and Algorithm 1.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from trustlab.data import dataset_info, load_dataset
from trustlab.evaluation.poisoning_run import POISONING_DIR
from trustlab.evaluation.record_set import commit_record_set
from trustlab.poisoning.svm import (SVMPoisonConfig, binary_pair, classification_error, fit_svm, label_flip,
                                    loss_surface, path_errors, svm_poison, validation_hinge_loss)
from trustlab.runs import config_hash, versions, write_json, write_records
from trustlab.runs.folder import check_overwritable, run_lock, write_marker

__all__ = ["ROW_FIELDS", "POISONS_FILE", "TOY", "check_pair", "poison_points", "pair_sets", "toy_sets",
           "svm_poisoning_run"]

POISONS_FILE = "poisons.safetensors"
ROW_FIELDS = ("idx", "y", "method", "point", "n_poison", "step", "val_loss", "val_error", "test_error", "x_norm",
              "moved", "final")
_POSITION_MAX_D = 2  # rows hold the poison's coordinates only for 2-D problems (the path figure)
TOY = "gaussians-2d"  # two Gaussian classes in [0, 1]^2 (classes 0 and 1): the lecture's path figure
_SURFACE_RESOLUTION = 30


def _num_classes(dataset: str) -> int:
    return 2 if dataset == TOY else dataset_info(dataset).num_classes


def _image_shape(dataset: str) -> list[int] | None:
    return None if dataset == TOY else list(dataset_info(dataset).shape)


def toy_sets(*, n_train: int, n_val: int, n_test: int | None, seed: int,
             pair: tuple[int, int] = (1, 0)) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two Gaussian classes in [0, 1]^2 (class 1 around (0.65, 0.65), class 0 around (0.35, 0.35), sd 0.12),
    half of each set per class, labels +1 (``pair[0]``) and -1 (``pair[1]``), in :func:`pair_sets`' format."""
    positive, negative = check_pair(pair, 2)
    rng = np.random.default_rng(seed)
    centre = {1: 0.65, 0: 0.35}
    out = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test or 1000)):
        k = n // 2
        x = np.vstack([rng.normal(centre[positive], 0.12, (k, 2)), rng.normal(centre[negative], 0.12, (n - k, 2))])
        out[name] = (x.clip(0.0, 1.0), np.r_[np.ones(k, np.int64), -np.ones(n - k, np.int64)], np.arange(n))
    return out


def check_pair(pair: tuple[int, int], num_classes: int) -> tuple[int, int]:
    """``pair`` if it names two different classes in ``[0, num_classes)``.

    Raises:
        ValueError: a class out of range, or the two classes equal (the message names the values).
    """
    if len(pair) != 2:
        raise ValueError(f"a pair names two classes, got {list(pair)}")
    for c in pair:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            raise ValueError(f"class {c!r} of pair {list(pair)} is out of range [0, {num_classes})")
    if pair[0] == pair[1]:
        raise ValueError(f"the two classes of a pair must differ, got {pair[0]} and {pair[1]}")
    return int(pair[0]), int(pair[1])


def poison_points(n_train: int, *, points: int | None = None, rate: float | None = None) -> int:
    """The number of poison points: ``points``, or ``round(rate * n_train)``.

    Raises:
        ValueError: neither or both given, ``rate`` outside [0, 1], a rate that rounds to zero points, or
            ``points`` < 1 (the message names the value).
    """
    if (points is None) == (rate is None):
        raise ValueError("give exactly one of points and rate")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        points = round(rate * n_train)
        if points == 0:
            raise ValueError(f"no poison sample generated: rate {rate} of {n_train} training points rounds to 0")
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ValueError(f"points must be an int >= 1, got {points!r}")
    return points


def pair_sets(dataset: str, pair: tuple[int, int], *, n_train: int, n_val: int, n_test: int | None, seed: int,
              root: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Training, validation and test sets of one class pair, labels +1 (``pair[0]``) and -1 (``pair[1]``).

    Training and validation points are drawn without overlap from the training split, the test points (all of
    the pair's, or the first ``n_test`` of a seeded permutation) from the test split.

    Returns:
        ``{"train" | "val" | "test": (x (N, D) float64, y (N,) +1/-1, idx (N,) indices into the split)}``.

    Raises:
        ValueError: a bad pair, or fewer examples of the pair than asked for (counts named).
    """
    if dataset == TOY:
        return toy_sets(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, pair=pair)
    info = dataset_info(dataset)
    positive, negative = check_pair(pair, info.num_classes)
    rng = np.random.default_rng(seed)
    out = {}
    for split, sizes in (("train", (n_train, n_val)), ("test", (n_test,))):
        x, y = load_dataset(dataset, split, root=root, download=False)
        keep = np.flatnonzero((y.numpy() == positive) | (y.numpy() == negative))
        xs, ys = binary_pair(x.numpy(), y.numpy(), positive, negative)
        want = sum(s for s in sizes if s is not None) if None not in sizes else len(keep)
        if want > len(keep):
            raise ValueError(f"{dataset} {split} holds {len(keep)} examples of classes {positive} and {negative}, "
                             f"asked for {want}")
        order = rng.permutation(len(keep))[:want]
        parts = np.split(order, np.cumsum([s for s in sizes if s is not None])[:-1]) if None not in sizes else [order]
        names = ("train", "val") if split == "train" else ("test",)
        for name, part in zip(names, parts):
            out[name] = (xs[part], ys[part], keep[part])
    return out


def _step_rows(res, x_tr, y_tr, sets, config, classes) -> list[dict[str, Any]]:
    """One row per accepted step of each poison point, errors of the SVM retrained with the earlier points
    and the current one."""
    rows: list[dict[str, Any]] = []
    x_cur, y_cur = x_tr, y_tr
    for p, path in enumerate(res.paths):
        errs = path_errors(x_cur, y_cur, path.path, path.y, sets, config=config)
        for t, u in enumerate(path.path):
            row = {"idx": len(rows), "y": classes[path.y], "method": "gradient", "point": p, "n_poison": p + 1,
                   "step": t, "val_loss": float(path.losses[t]), "val_error": float(errs["val"][t]),
                   "test_error": float(errs["test"][t]), "x_norm": float(np.linalg.norm(u)),
                   "moved": float(np.linalg.norm(u - path.path[0])), "final": t == len(path.path) - 1}
            if u.size <= _POSITION_MAX_D:
                row["position"] = [float(v) for v in u]
            rows.append(row)
        x_cur, y_cur = np.vstack([x_cur, path.x[None, :]]), np.append(y_cur, path.y)
    return rows


def _flip_rows(x_tr, y_tr, sets, config, classes, *, n_points: int, seed: int, start: int) -> tuple[list, np.ndarray]:
    """The label-flipping baseline: rows for 1..n_points flipped copies (a seeded draw), added cumulatively."""
    xf, yf, source = label_flip(x_tr, y_tr, n_points=min(n_points, len(x_tr)), rng=np.random.default_rng(seed + 1))
    rows = []
    for k in range(1, len(xf) + 1):
        svm = fit_svm(np.vstack([x_tr, xf[:k]]), np.append(y_tr, yf[:k]), config)
        rows.append({"idx": start + k - 1, "y": classes[int(yf[k - 1])], "method": "label_flip", "point": k - 1,
                     "n_poison": k, "step": 0, "val_loss": validation_hinge_loss(svm, *sets["val"]),
                     "val_error": classification_error(svm, *sets["val"]),
                     "test_error": classification_error(svm, *sets["test"]),
                     "x_norm": float(np.linalg.norm(xf[k - 1])), "moved": 0.0, "final": True})
    return rows, source


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        check_overwritable(out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def svm_poisoning_run(out: Path, *, pair: tuple[int, int] = (7, 1), n_points: int | None = None,
                      rate: float | None = None, config: SVMPoisonConfig = SVMPoisonConfig(),
                      dataset: str = "mnist", n_train: int = 100, n_val: int = 500, n_test: int | None = None,
                      seed: int = 0, root: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Poison an SVM on one class pair and write the experiment folder ``out`` with its record set.

    Args:
        out: the experiment folder (created; must be empty or absent unless ``overwrite``).
        pair: (positive, negative) classes, e.g. (7, 1); the poison points are cloned from the positive class
            and take the negative label (the paper's attacked class).
        n_points, rate: how many poison points: a count, or ``round(rate * n_train)`` (exactly one of them).
        config: the SVM and attack settings (kernel, C, gamma, steps, step size, ...).
        dataset: a registered image dataset, or :data:`TOY` (two Gaussian classes in [0, 1]^2; the record
            set then also holds the validation-error surface of the first point, for the path figure).
        n_train, n_val: training and validation points (from the training split).
        n_test: test points (from the test split; all of the pair's when None).
        seed: the seed of the draws and of the poison starting points.
        root: the data root.
        overwrite: replace an existing experiment folder.

    Returns:
        The summary: clean, one-point and final validation/test errors of the attack and of label flipping.

    Raises:
        ValueError: a bad pair, rate or count (INP-17, named in the message); FileExistsError: ``out`` is taken.
    """
    k = poison_points(n_train, points=n_points, rate=rate)
    sets = pair_sets(dataset, pair, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, root=root)
    out = Path(out)
    _prepare(out, overwrite)
    (x_tr, y_tr, _), (x_va, y_va, _), (x_te, y_te, te_idx) = sets["train"], sets["val"], sets["test"]
    classes = {1: int(pair[0]), -1: int(pair[1])}
    evaluation = {"val": (x_va, y_va), "test": (x_te, y_te)}
    clean = fit_svm(x_tr, y_tr, config)
    t0 = time.perf_counter()
    res = svm_poison(x_tr, y_tr, x_va, y_va, n_points=k, config=config, rng=np.random.default_rng(seed),
                     attacked_class=1)
    attack_seconds = time.perf_counter() - t0
    rows = _step_rows(res, x_tr, y_tr, evaluation, config, classes)
    flip, flip_source = _flip_rows(x_tr, y_tr, evaluation, config, classes, n_points=k, seed=seed, start=len(rows))
    clean_row = {"idx": len(rows) + len(flip), "y": classes[1], "method": "clean", "point": -1, "n_poison": 0,
                 "step": 0, "val_loss": validation_hinge_loss(clean, x_va, y_va),
                 "val_error": classification_error(clean, x_va, y_va),
                 "test_error": classification_error(clean, x_te, y_te), "x_norm": 0.0, "moved": 0.0, "final": True}
    rows += flip + [clean_row]
    finals = [r for r in rows if r["method"] == "gradient" and r["final"]]
    summary = {"action": "svm", "pair": list(classes.values()), "kernel": config.kernel, "n_train": len(x_tr),
               "n_val": len(x_va), "n_test": len(x_te), "n_poison": k,
               "clean_val_error": clean_row["val_error"], "clean_test_error": clean_row["test_error"],
               "one_point_test_error": finals[0]["test_error"], "one_point_val_error": finals[0]["val_error"],
               "final_test_error": finals[-1]["test_error"], "final_val_error": finals[-1]["val_error"],
               "label_flip_test_error": flip[-1]["test_error"], "label_flip_one_point_test_error": flip[0]["test_error"],
               "iterations": [len(p.path) - 1 for p in res.paths], "stopped": [p.stopped for p in res.paths],
               "attack_seconds": attack_seconds}
    exp_config = {"experiment": "poison-svm", "dataset": dataset, "pair": list(classes.values()), "seed": seed,
                  "n_train": n_train, "n_val": n_val, "n_test": n_test, "root": root, "defense": "none",
                  "model": f"svm-{config.kernel}"}
    pred = np.where(clean.decision_function(x_te) > 0, 1, -1)
    _write_root(out, exp_config, dataset, [
        {"idx": int(te_idx[i]), "y": classes[int(y_te[i])], "pred": classes[int(pred[i])],
         "correct": bool(pred[i] == y_te[i])} for i in range(len(y_te))], clean_row)
    set_config = {"action": "svm", "experiment": exp_config, "svm_poison": config.to_dict(), "n_poison": k,
                  "rate": rate, "image_shape": _image_shape(dataset), "versions": versions()}
    extra = {}
    if x_tr.shape[1] == 2:  # the lecture's figure: the first point's path over the validation-error surface
        surface = loss_surface(x_tr, y_tr, x_va, y_va, y_c=int(res.y[0]), config=config,
                               resolution=_SURFACE_RESOLUTION)
        extra = {"surface_error": surface["error"], "surface_loss": surface["loss"], "surface_grid": surface["grid0"],
                 "x_train": x_tr, "y_train": y_tr}
    files = {"config.json": set_config, "records.jsonl": rows,
             POISONS_FILE: _poisons_bytes(res, x_tr, classes, flip_source, extra), "summary.json": summary}
    with run_lock(out):
        commit_record_set(out / POISONING_DIR / f"svm-{config_hash(set_config)[:10]}", files)
    return summary


def _write_root(out: Path, exp_config: dict, dataset: str, records: list, clean_row: dict) -> None:
    write_json(out / "config.json", {"config": exp_config, "dataset": {"name": dataset, "num_classes": _num_classes(dataset)},
                                     "versions": versions()})
    write_records(out / "records.jsonl", records)
    write_json(out / "summary.json", {"clean_test_error": clean_row["test_error"],
                                      "clean_val_error": clean_row["val_error"]})
    write_marker(out, kind="poison-svm")


def _poisons_bytes(res, x_tr: np.ndarray, classes: dict[int, int], flip_source: np.ndarray,
                   extra: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({**{k: np.ascontiguousarray(v) for k, v in extra.items()},"x_poison": res.x.astype(np.float32), "x_start": x_tr[res.source].astype(np.float32),
                 "y_poison": np.array([classes[int(v)] for v in res.y], dtype=np.int64),
                 "source": res.source.astype(np.int64), "label_flip_source": flip_source.astype(np.int64)})
