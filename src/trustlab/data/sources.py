"""Where each dataset's official files live: directory names, file names, MD5 checksums and download mirrors.

The MD5 values are the published ones of the official distribution files (the same values torchvision checks).
Tests monkeypatch ``MD5`` and ``MIRRORS`` to point at files they write themselves; nothing else should.
"""

from __future__ import annotations

__all__ = ["SUBDIR", "IDX_FILES", "CIFAR_TARBALL", "CIFAR_BIN_DIR", "CIFAR_BINS", "MD5", "MIRRORS"]

# Directory of each file-backed dataset below a data root.
SUBDIR: dict[str, str] = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10"}

# IDX gzip files of MNIST and Fashion-MNIST, per split: (images, labels).
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

CIFAR_TARBALL = "cifar-10-binary.tar.gz"
CIFAR_BIN_DIR = "cifar-10-batches-bin"  # the tarball's top-level folder
CIFAR_BINS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}

MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_TARBALL: "c32a1d4ab5d03f1284b67883e8d87530"},
}

# Base URLs tried in order; a file's URL is base + file name.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's mirror of the official files
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}
