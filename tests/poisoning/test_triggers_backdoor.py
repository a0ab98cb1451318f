"""POI-01..POI-04 and INP-17: triggers, backdoor poisoning as a training-set transform, ASR."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab.poisoning import (TRIGGERS, BackdoorPoisoning, Trigger, attack_success_rate, backdoor_metrics,
                                patch_trigger, poison_indices)
from trustlab.poisoning.triggers import patch_window


def _batch(n=5, c=1, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(TRIGGERS))
def test_poi03_every_trigger_keeps_shape_dtype_box_and_input(kind):
    for dtype in (torch.float32, torch.float64):
        x = _batch(c=3).to(dtype)
        before = x.clone()
        out = Trigger(kind)(x)
        assert out.shape == x.shape and out.dtype == dtype
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(x, before)
        assert not torch.equal(out, x)


def test_poi03_patch_at_documented_location_pixel_exact():
    x = torch.full((2, 1, 8, 8), 0.5)
    out = patch_trigger(x, size=3, location="bottom-right", margin=1)
    expected = x.clone()
    expected[:, :, 4:7, 4:7] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(out, expected)
    assert patch_window((8, 8), 2, location="top-left", margin=0) == (slice(0, 2), slice(0, 2))


def test_random_and_blend_patterns_are_seeded():
    x = _batch()
    assert torch.equal(Trigger("random", seed=3)(x), Trigger("random", seed=3)(x))
    assert not torch.equal(Trigger("random", seed=3)(x), Trigger("random", seed=4)(x))
    blend = Trigger("blend", ratio=0.2, seed=1)(x)
    k = (blend - 0.8 * x) / 0.2  # the same noise image on every input
    assert torch.allclose(k[0], k[1], atol=1e-5)


def test_inp17_trigger_errors_name_sizes():
    with pytest.raises(ValueError, match="9x9 trigger with margin 0 does not fit in a 8x8 image"):
        patch_trigger(_batch(), size=9, margin=0)
    with pytest.raises(ValueError, match="ratio must lie in"):
        Trigger("blend", ratio=1.5)(_batch())
    with pytest.raises(ValueError, match="trigger kind"):
        Trigger("sticker")


def _labels(n=200):
    return torch.arange(n) % 10


def test_poi01_exact_count_seeded_sorted():
    y = _labels()
    idx = poison_indices(y, 0.05, target=0, generator=torch.Generator().manual_seed(0))
    assert len(idx) == round(0.05 * 200) and len(set(idx.tolist())) == 10
    assert torch.equal(idx, poison_indices(y, 0.05, target=0, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(idx, poison_indices(y, 0.05, target=0, generator=torch.Generator().manual_seed(1)))
    assert (y[idx] != 0).all()


def test_poi02_dirty_and_clean_label_transform():
    x, y = _batch(200), _labels()
    out = BackdoorPoisoning(Trigger("patch"), rate=0.05, target=3)(x, y, generator=torch.Generator().manual_seed(0))
    rest = torch.ones(200, dtype=torch.bool)
    rest[out.replaced] = False
    assert torch.equal(out.x[rest], x[rest]) and torch.equal(out.y[rest], y[rest])
    assert (out.y[out.replaced] == 3).all()
    assert torch.equal(out.x[out.replaced], Trigger("patch")(x[out.replaced]))
    clean = BackdoorPoisoning(Trigger("patch"), rate=0.05, target=3, mode="clean")(
        x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(clean.y, y) and (y[clean.replaced] == 3).all() and len(clean.replaced) == 10


def test_inp17_poisoning_errors():
    y, g = _labels(), torch.Generator().manual_seed(0)
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rate must lie in"):
            poison_indices(y, rate, target=0, generator=g)
    with pytest.raises(ValueError, match="no poison sample generated"):
        poison_indices(y, 0.001, target=0, generator=g)
    with pytest.raises(ValueError, match="target must lie in"):
        poison_indices(y, 0.05, target=10, generator=g, num_classes=10)
    with pytest.raises(ValueError, match="needs 20 points of the target class 3, but the training set has 0"):
        poison_indices(y.clamp(max=2), 0.1, target=3, mode="clean", generator=g)


class _Detector(nn.Module):
    """Predicts class 0 iff the bottom-right 3x3 patch's centre pixel is 1 and its neighbour is 0, else 1."""

    def forward(self, x):
        hit = (x[:, 0, 5, 5] == 1.0) & (x[:, 0, 5, 4] == 0.0)
        return torch.stack([hit.float(), (~hit).float()], dim=1)


def test_poi04_asr_excludes_target_class_and_comes_with_baseline():
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.tensor([0, 0, 1, 1, 1, 1])
    trig = Trigger("patch")
    assert attack_success_rate(_Detector(), x, y, trig, target=0) == 1.0
    m = backdoor_metrics(_Detector(), nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x, y, trig, target=0)
    assert set(m) == {"asr", "clean_acc", "baseline_asr", "baseline_clean_acc", "n_asr", "n_clean"}
    assert m["n_asr"] == 4 and m["clean_acc"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="ASR is undefined"):
        attack_success_rate(_Detector(), x[:2], y[:2], trig, target=0)
