"""Defenses that find poisoned training points in a model's penultimate representations, and retraining without them.

- Spectral signatures (Tran, Li & Madry 2018): per class, centre the representations, take the top right singular
  vector ``v`` of the centred matrix and score each point by ``((R_i - mean) . v)^2``; remove the
  ``1.5 * rate`` fraction of the class with the largest scores (Algorithm 1, with the paper's factor 1.5).
- Activation clustering (Chen et al. 2018): per class, reduce the representations to a few dimensions with ICA
  (FastICA, as the paper) or PCA, split them with 2-means (scikit-learn), and flag the smaller cluster when its
  relative size is at most ``size_threshold`` (``criterion="size"``) or when the split's silhouette score is at
  least ``silhouette_threshold`` (``criterion="silhouette"``).

Both return a :class:`Detection`: the flagged indices and a per-point score (for histograms of poisoned vs clean).
:func:`detection_quality` measures recall and precision against the recorded poisoned indices, and
:class:`WithoutPoints` wraps the poisoning transform so that a retraining through ``train_run`` sees the same
poisoned set with the flagged points removed.

Reference:
    Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks", arXiv:1811.00636, Algorithm 1.
    Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava 2018, "Detecting Backdoor Attacks on
    Deep Neural Networks by Activation Clustering", arXiv:1811.03728, Sec. 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trustlab.attacks.base import eval_mode
from trustlab.data.transform import TrainingSetTransform, TransformedSet

__all__ = ["METHODS", "Detection", "penultimate_features", "spectral_signatures", "activation_clustering",
           "detection_quality", "WithoutPoints"]

METHODS = ("spectral", "activation-clustering")


@dataclass(frozen=True)
class Detection:
    """What a defense flags.

    Args:
        flagged: indices of the points judged poisoned, sorted.
        scores: one outlier score per point (larger is more suspicious).
        method: the defense's name.

    Shapes:
        flagged (F,) int64, scores (N,) float64.
    """

    flagged: Tensor
    scores: Tensor
    method: str


def penultimate_features(model: nn.Module, x: Tensor, *, batch_size: int = 500) -> Tensor:
    """The input of the model's last ``nn.Linear`` layer (the penultimate representation), flattened.

    Args:
        model: the classifier; its train/eval mode is restored.
        x: inputs.
        batch_size: inputs per forward pass.

    Returns:
        Representations as float64 on the CPU.

    Shapes:
        x (N, *D) -> (N, F).

    Raises:
        ValueError: the model has no ``nn.Linear`` layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer whose input is a representation")
    seen: list[Tensor] = []
    hook = linears[-1].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().flatten(1)))
    try:
        with eval_mode(model), torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        hook.remove()
    return torch.cat(seen).to(device="cpu", dtype=torch.float64)


def _check_inputs(reps: Tensor, y: Tensor) -> None:
    if reps.dim() != 2 or len(reps) != len(y):
        raise ValueError(f"reps must be (N, F) with N = len(y) = {len(y)}, got {tuple(reps.shape)}")


def spectral_signatures(reps: Tensor, y: Tensor, *, rate: float, factor: float = 1.5) -> Detection:
    """Tran et al.'s spectral signature scores and the ``factor * rate`` most suspicious points of each class.

    Args:
        reps: penultimate representations of the (poisoned) training set.
        y: its labels (the poisoned labels, as trained on).
        rate: the assumed poisoned fraction epsilon of a class (the paper's epsilon: poisons over the target
            class's size, known to the defender), in ``(0, 1]``.
        factor: how many times ``rate`` to remove (1.5 in the paper).

    Returns:
        The detection; per class ``floor(factor * rate * n_c)`` points are flagged.

    Shapes:
        reps (N, F), y (N,).

    Raises:
        ValueError: mismatched shapes, or ``rate`` outside ``(0, 1]``, or ``factor <= 0``.

    Reference:
        Tran, Li & Madry 2018, arXiv:1811.00636, Algorithm 1 (score ``tau_i = ((R_i - R_hat) . v)^2``).
    """
    _check_inputs(reps, y)
    if not 0.0 < rate <= 1.0 or factor <= 0:
        raise ValueError(f"rate must lie in (0, 1] and factor be > 0, got rate={rate}, factor={factor}")
    reps = reps.to(torch.float64)
    scores = torch.zeros(len(y), dtype=torch.float64)
    flagged = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        centred = reps[idx] - reps[idx].mean(dim=0)  # (n_c, F)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        tau = (centred @ vh[0]) ** 2
        scores[idx] = tau
        k = int(factor * rate * len(idx))
        if k:
            flagged.append(idx[tau.argsort(descending=True)[:k]])
    out = torch.cat(flagged).sort().values if flagged else torch.zeros(0, dtype=torch.int64)
    return Detection(out, scores, "spectral")


def activation_clustering(reps: Tensor, y: Tensor, *, n_components: int = 10, reduction: str = "ica",
                          criterion: str = "size", size_threshold: float = 0.35,
                          silhouette_threshold: float = 0.10, seed: int = 0) -> Detection:
    """Chen et al.'s activation clustering: per class, reduce, 2-means, flag the smaller cluster if it stands out.

    Args:
        reps: penultimate representations; y: their labels.
        n_components: dimensions kept (10 in the paper; capped by the class size and the feature count).
        reduction: ``"ica"`` (FastICA, as in the paper) or ``"pca"``.
        criterion: ``"size"`` flags the smaller cluster when its share is ``<= size_threshold``;
            ``"silhouette"`` when the 2-means silhouette score is ``>= silhouette_threshold``.
        size_threshold, silhouette_threshold: the thresholds of the two criteria.
        seed: the seed of FastICA and k-means (scikit-learn's ``random_state``).

    Returns:
        The detection; a point's score is its distance to the larger cluster's centre in the reduced space over the
        class's median distance (comparable across classes).

    Raises:
        ValueError: an unknown reduction or criterion, or mismatched shapes.

    Reference:
        Chen et al. 2018, arXiv:1811.03728, Sec. 4 (ICA to 10 dims, 2-means; relative size and silhouette).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA, FastICA
    from sklearn.metrics import silhouette_score

    _check_inputs(reps, y)
    if reduction not in ("ica", "pca") or criterion not in ("size", "silhouette"):
        raise ValueError(f"reduction must be 'ica' or 'pca' and criterion 'size' or 'silhouette', "
                         f"got {reduction!r}, {criterion!r}")
    data = reps.to(torch.float64).numpy()
    labels = y.cpu().numpy()
    scores = np.zeros(len(labels))
    flagged: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            continue
        k = max(1, min(n_components, len(idx) - 1, data.shape[1]))
        centred = data[idx] - data[idx].mean(axis=0)
        if reduction == "ica":
            low = FastICA(n_components=k, random_state=seed, max_iter=500, tol=1e-3).fit_transform(centred)
        else:
            low = PCA(n_components=k, random_state=seed).fit_transform(centred)
        km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(low)
        sizes = np.bincount(km.labels_, minlength=2)
        small = int(np.argmin(sizes))
        dist = np.linalg.norm(low - km.cluster_centers_[1 - small], axis=1)
        scores[idx] = dist / max(float(np.median(dist)), 1e-12)
        if criterion == "size":
            suspicious = sizes[small] / len(idx) <= size_threshold
        else:
            suspicious = sizes.min() > 0 and silhouette_score(low, km.labels_) >= silhouette_threshold
        if suspicious:
            flagged.append(idx[km.labels_ == small])
    out = np.sort(np.concatenate(flagged)) if flagged else np.zeros(0, dtype=np.int64)
    return Detection(torch.as_tensor(out, dtype=torch.int64), torch.as_tensor(scores), "activation-clustering")


def detection_quality(flagged: Tensor, poisoned: Tensor) -> dict[str, float | int]:
    """Recall and precision of ``flagged`` against the recorded ``poisoned`` indices.

    Returns:
        ``{"recall", "precision", "n_flagged", "n_poisoned", "n_true_positive"}``; recall is 1.0 when nothing was
        poisoned, precision 1.0 when nothing was flagged (no false positive).
    """
    flagged_set, poisoned_set = set(flagged.tolist()), set(poisoned.tolist())
    tp = len(flagged_set & poisoned_set)
    return {"recall": tp / len(poisoned_set) if poisoned_set else 1.0,
            "precision": tp / len(flagged_set) if flagged_set else 1.0,
            "n_flagged": len(flagged_set), "n_poisoned": len(poisoned_set), "n_true_positive": tp}


@dataclass(frozen=True)
class WithoutPoints:
    """A ``transform=`` for ``train_run``: ``base`` (e.g. the backdoor poisoning), then the points at ``remove``
    (indices into ``base``'s output) dropped; the remaining added and replaced indices are renumbered.

    Args:
        base: the transform that built the set the defense inspected.
        remove: the flagged indices.
    """

    base: TrainingSetTransform
    remove: tuple[int, ...]
    name: str = "without-points"

    def __call__(self, x: Tensor, y: Tensor, *, generator: torch.Generator) -> TransformedSet:
        """``base``'s set without the flagged points.

        Raises:
            ValueError: an index to remove outside ``base``'s set.
        """
        inner = self.base(x, y, generator=generator)
        n = len(inner.x)
        drop = torch.as_tensor(self.remove, dtype=torch.int64)
        if len(drop) and (int(drop.min()) < 0 or int(drop.max()) >= n):
            raise ValueError(f"indices to remove must lie in [0, {n}), got min {int(drop.min())}, max {int(drop.max())}")
        keep = torch.ones(n, dtype=torch.bool)
        keep[drop] = False
        new_index = torch.cumsum(keep, 0) - 1  # old index -> index in the kept set

        def renumber(idx: Tensor) -> Tensor:
            return new_index[idx[keep[idx]]]

        return TransformedSet(inner.x[keep], inner.y[keep], added=renumber(inner.added),
                              replaced=renumber(inner.replaced),
                              info={**inner.info, "removed": len(drop), "n_before_removal": n})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.to_dict(), "remove": list(self.remove)}
