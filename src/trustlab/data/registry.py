"""The dataset registry: what each dataset looks like, independent of where its files live."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASETS", "dataset_info"]

_DIGIT_NAMES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Args:
        name: Registry name, e.g. ``"mnist"``.
        shape: One example's shape ``(C, H, W)``.
        num_classes: Number of labels; labels lie in ``[0, num_classes)``.
        class_names: Human-readable name of each label, indexed by label.
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, _DIGIT_NAMES),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, _DIGIT_NAMES),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        (1, 28, 28),
        10,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry of ``name``.

    Raises:
        ValueError: ``name`` is not a registered dataset (the message lists the valid names).
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]
