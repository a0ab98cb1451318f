"""Spectral signatures and activation clustering on constructed representations; retraining transform."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.poisoning import BackdoorPoisoning, Trigger
from trustlab.poisoning.defenses import (WithoutPoints, activation_clustering, detection_quality,
                                         penultimate_features, spectral_signatures)


def _reps(separable: bool, *, n_per_class=100, n_poison=5, dim=16, seed=0):
    """Two classes of Gaussian representations; class 0 holds ``n_poison`` poisons, shifted far along one axis
    when ``separable``, drawn from the clean distribution otherwise."""
    g = torch.Generator().manual_seed(seed)
    reps = torch.randn(2 * n_per_class, dim, generator=g, dtype=torch.float64)
    reps[n_per_class:] += 3.0
    y = torch.cat([torch.zeros(n_per_class), torch.ones(n_per_class)]).long()
    poisoned = torch.arange(n_poison) * 7
    if separable:
        reps[poisoned, 0] += 12.0
    return reps, y, poisoned


def test_spectral_signatures_recall_one_when_separable():
    reps, y, poisoned = _reps(True)
    det = spectral_signatures(reps, y, rate=0.05)
    q = detection_quality(det.flagged, poisoned)
    assert q["recall"] == 1.0 and q["n_flagged"] == 2 * int(1.5 * 0.05 * 100)
    clean = torch.ones(100, dtype=torch.bool)
    clean[poisoned] = False
    assert det.scores[poisoned].min() > det.scores[:100][clean].max()


def test_spectral_signatures_near_chance_when_not_separable():
    reps, y, poisoned = _reps(False)
    q = detection_quality(spectral_signatures(reps, y, rate=0.05).flagged, poisoned)
    assert q["recall"] <= 0.4


@pytest.mark.parametrize("reduction", ["ica", "pca"])
def test_activation_clustering_recall_one_when_separable(reduction):
    reps, y, poisoned = _reps(True)
    det = activation_clustering(reps, y, n_components=3, reduction=reduction, size_threshold=0.15)
    q = detection_quality(det.flagged, poisoned)
    assert q["recall"] == 1.0 and q["precision"] == 1.0
    sil = activation_clustering(reps, y, n_components=3, reduction=reduction, criterion="silhouette",
                                silhouette_threshold=0.5)
    assert detection_quality(sil.flagged, poisoned)["recall"] == 1.0


def test_activation_clustering_misses_when_not_separable():
    reps, y, poisoned = _reps(False)
    det = activation_clustering(reps, y, n_components=3, reduction="pca")
    assert detection_quality(det.flagged, poisoned)["recall"] <= 0.6


def test_errors_name_values():
    reps, y, _ = _reps(True)
    with pytest.raises(ValueError, match="rate must lie in"):
        spectral_signatures(reps, y, rate=0.0)
    with pytest.raises(ValueError, match="reduction must be"):
        activation_clustering(reps, y, reduction="tsne")
    with pytest.raises(ValueError, match=r"reps must be \(N, F\)"):
        spectral_signatures(reps[:5], y, rate=0.1)


def test_penultimate_features_are_last_linear_input():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).train()
    x = torch.rand(7, 1, 2, 2)
    feats = penultimate_features(net, x, batch_size=3)
    assert feats.shape == (7, 3) and net.training
    assert torch.allclose(feats, torch.relu(net[1](x.flatten(1))).double())


def test_without_points_removes_and_renumbers():
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 4
    base = BackdoorPoisoning(Trigger(), rate=0.1, target=0)
    inner = base(x, y, generator=torch.Generator().manual_seed(5))
    drop = tuple(inner.replaced[:2].tolist()) + (1,)
    out = WithoutPoints(base, drop)(x, y, generator=torch.Generator().manual_seed(5))
    assert len(out.x) == 40 - len(set(drop)) and len(out.replaced) == 2
    assert (out.y[out.replaced] == 0).all()
    assert torch.equal(out.x[out.replaced], inner.x[inner.replaced[2:]])
