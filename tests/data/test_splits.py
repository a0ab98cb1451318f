"""Tests of trustlab.data splits and loaders: seeded, disjoint, fingerprinted, no global RNG."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trustlab.data import Splits, load_dataset, make_loader, make_splits
from trustlab.data.loader import data_placement, place_training_set
from trustlab.data.digits import DIGITS_TEST_FRACTION
from trustlab.data.splits import DEFAULT_VAL_SIZE, DIGITS_VAL_FRACTION, carve_indices, fingerprint_of


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("TRUSTLAB_DATA", raising=False)


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """The multiset of (pixels, label) examples."""
    return Counter(zip(map(tuple, x.flatten(1).tolist()), y.tolist()))


def digits_sizes() -> tuple[int, int, int]:
    """(train, val, test) sizes of the default digits splits, from scikit-learn's digits and the documented rule.

    The test part is the fixed 20% split (rounded up, as ``train_test_split`` rounds a fractional test size), and
    val is 10% of the rest.
    """
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    test = math.ceil(DIGITS_TEST_FRACTION * n)
    val = round(DIGITS_VAL_FRACTION * (n - test))
    return n - test - val, val, test


def test_digits_default_sizes():
    splits = make_splits("digits")
    assert isinstance(splits, Splits) and splits.info.name == "digits" and splits.seed == 0
    assert tuple(len(s[0]) for s in (splits.train, splits.val, splits.test)) == digits_sizes()
    for x, y in (splits.train, splits.val, splits.test):
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(splits.fingerprint) == 64 and int(splits.fingerprint, 16) >= 0


def test_val_is_carved_from_train_without_overlap():
    n, val_size = 100, 30
    train_idx, val_idx = carve_indices(n, val_size, torch.Generator().manual_seed(3))
    assert len(train_idx) == n - val_size and len(val_idx) == val_size
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(n))
    # End to end: train + val is exactly the official training part, and the test part is untouched.
    splits = make_splits("digits", seed=5)
    full = load_dataset("digits", "train")
    assert rows(*splits.train) + rows(*splits.val) == rows(*full)
    assert torch.equal(splits.test[0], load_dataset("digits", "test")[0])


def test_same_seed_is_deterministic_and_different_seeds_differ():
    a, b, c = make_splits("digits", seed=1), make_splits("digits", seed=1), make_splits("digits", seed=2)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part)[0], getattr(b, part)[0])
        assert torch.equal(getattr(a, part)[1], getattr(b, part)[1])
    assert a.fingerprint == b.fingerprint
    assert not torch.equal(a.val[0], c.val[0]) and a.fingerprint != c.fingerprint


def test_fingerprint_covers_all_splits():
    s = make_splits("digits", subset=40)
    assert s.fingerprint == fingerprint_of(s.train, s.val, s.test)
    y = s.test[1].clone()
    y[0] = (y[0] + 1) % 10
    assert fingerprint_of(s.train, s.val, (s.test[0], y)) != s.fingerprint


def test_subset_sizes_and_membership():
    subset = 50  # below every part's size: each part keeps exactly that many
    small = make_splits("digits", subset=subset, seed=4)
    assert [len(p[0]) for p in (small.train, small.val, small.test)] == [subset] * 3
    assert small.train[0].shape == (subset, 1, 8, 8)
    full = make_splits("digits", seed=4)
    # Subsets come from the same seeded carving: subset train/val lie inside the full train/val.
    assert not rows(*small.train) - rows(*full.train)
    assert not rows(*small.val) - rows(*full.val)
    assert not rows(*small.test) - rows(*full.test)
    big_subset = 1000  # above the val and test sizes: those parts stay whole
    big = make_splits("digits", subset=big_subset)
    assert [len(p[0]) for p in (big.train, big.val, big.test)] == [min(n, big_subset) for n in digits_sizes()]
    assert len(big.train[0]) == big_subset < digits_sizes()[0]
    again = make_splits("digits", subset=50, seed=4)
    assert torch.equal(again.test[0], small.test[0]) and again.fingerprint == small.fingerprint


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_subset_values_raise_valueerror(bad):
    with pytest.raises(ValueError, match=r"subset must be an int >= 1, got"):
        make_splits("digits", subset=bad)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"val_size": 0}, r"val_size must be an int >= 1, got 0"),
    ({"val_size": 1.5}, r"val_size must be an int >= 1, got 1.5"),
    ({"seed": -1}, r"seed must be an int >= 0, got -1"),
    ({"seed": "0"}, r"seed must be an int >= 0, got '0'"),
])
def test_bad_val_size_and_seed_raise_valueerror(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_splits("digits", **kwargs)


def test_inp10_val_size_leaving_no_training_data_raises():
    n = len(load_dataset("digits", "train")[0])
    with pytest.raises(ValueError, match=rf"dataset is empty: val_size={n} leaves no training examples"):
        make_splits("digits", val_size=n)
    assert len(make_splits("digits", val_size=n - 1).train[0]) == 1


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist2'; choose one of \['cifar10', 'digits'"):
        make_splits("mnist2")


def test_splits_are_frozen_and_leave_global_rng_alone():
    state = torch.get_rng_state()
    splits = make_splits("digits", subset=20)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'seed'"):
        splits.seed = 3


def test_mnist_splits_from_shared_data(shared_data_root):
    subset = 100
    splits = make_splits("mnist", root=shared_data_root, download=False, subset=subset, seed=0)
    assert [len(p[0]) for p in (splits.train, splits.val, splits.test)] == [subset] * 3
    full = make_splits("mnist", root=shared_data_root, download=False)
    val = DEFAULT_VAL_SIZE["mnist"]
    # MNIST's official parts are 60,000 training and 10,000 test images; val is carved from the training part
    assert [len(p[0]) for p in (full.train, full.val, full.test)] == [60_000 - val, val, 10_000]
    assert full.test[1][:5].tolist() == [7, 2, 1, 0, 4]


# ---------------------------------------------------------------- make_loader


def test_loader_batches_and_seeded_shuffle():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = list(make_loader(x, y, batch_size=4, shuffle=False))
    assert [len(b[0]) for b in batches] == [4, 4, 2] and batches[0][1].tolist() == [0, 1, 2, 3]

    def order(seed):
        loader = make_loader(x, y, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([b[1] for b in loader]).tolist()

    assert order(0) == order(0) and sorted(order(0)) == list(range(10)) and order(0) != order(1)


def test_loader_gathers_the_batches_a_per_example_loader_gives():
    """One gather per batch is the same values in the same order as torch's per-example fetch and stack (the
    batches, hence every training run, are unchanged), from the same seeded generator state."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(23, 1, 3, 3, generator=g), torch.randint(0, 10, (23,), generator=g)
    ours = make_loader(x, y, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    torch_own = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    for epoch in range(2):
        pairs = list(zip(ours, torch_own, strict=True))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs), epoch


def test_a_training_set_stays_on_the_gpu_where_it_fits_and_is_pinned_where_not():
    cuda = torch.device("cuda")  # only the decision: no CUDA call with free_bytes given
    assert data_placement(553_000_000, cuda, free_bytes=140 * 2**30) == "device"  # CIFAR-10 on an H200
    assert data_placement(10 * 2**30, cuda, free_bytes=16 * 2**30) == "pinned"
    assert data_placement(10 * 2**30, torch.device("cpu")) == "host"
    x, y = torch.rand(4, 2), torch.arange(4)
    moved_x, moved_y, pin = place_training_set(x, y, torch.device("cpu"))
    assert moved_x is x and moved_y is y and pin is False


def test_inp01_loader_rejects_bad_arguments():
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        make_loader(x, y, batch_size=0, shuffle=False)
    with pytest.raises(ValueError, match="same length, got 4 and 3"):
        make_loader(x, y[:3], batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="shuffle=True needs a torch.Generator"):
        make_loader(x, y, batch_size=2, shuffle=True)
