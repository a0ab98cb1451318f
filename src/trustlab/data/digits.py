"""scikit-learn's bundled 8x8 digits (no files, no download), with a fixed train/test split.

The digits set has no official test split, so trustlab fixes one: a stratified 20% test split drawn with
``sklearn.model_selection.train_test_split(..., test_size=0.2, stratify=y, random_state=0)``. It never changes
with the run's seed, so test accuracies are comparable across runs. ``split="train"`` is the other 80%.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_digits_split", "DIGITS_TEST_FRACTION", "DIGITS_SPLIT_SEED"]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # constant: the test split is part of the dataset's definition, not of a run


def load_digits_split(split: str) -> tuple[Tensor, Tensor]:
    """Load the train (1437 images) or test (360 images) part of the digits set.

    Shapes:
        x: (N, 1, 8, 8) float32 in [0, 1] (pixel counts 0..16 divided by 16); y: (N,) int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        index, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    x = torch.tensor(digits.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
    return x, torch.tensor(digits.target[idx], dtype=torch.int64)
