"""Datasets (digits, MNIST, Fashion-MNIST, CIFAR-10) as validated tensors, and seeded splits.

``load_dataset(name, split)`` returns pixels in [0, 1] and int64 labels; ``make_splits(name, seed=...)`` carves a
seeded validation set from the training set and fingerprints the result; ``make_loader`` batches tensors with
an explicit generator. Files are looked up in ``resolve_roots()`` and MD5-checked; missing ones are downloaded
atomically or reported with instructions.
"""

from __future__ import annotations

from trustlab.data.load import SPLITS, load_dataset
from trustlab.data.loader import make_loader
from trustlab.data.registry import DATASETS, DatasetInfo, dataset_info
from trustlab.data.roots import resolve_roots
from trustlab.data.splits import Splits, make_splits

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "SPLITS",
    "Splits",
    "dataset_info",
    "load_dataset",
    "make_loader",
    "make_splits",
    "resolve_roots",
]
