"""Tests of trustlab.data loading: registry, digits, MNIST IDX files, CIFAR-10 binaries, downloads (no network)."""

from __future__ import annotations

import gzip
import io
import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from trustlab.data import DATASETS, DatasetInfo, dataset_info, load_dataset, resolve_roots
from trustlab.data import cifar10, download, sources
from trustlab.data.digits import DIGITS_TEST_FRACTION
from trustlab.data.download import md5_of
from trustlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from trustlab.errors import DataError

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No real cache dir, no $TRUSTLAB_DATA, and no URL other than file:// can be opened."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("TRUSTLAB_DATA", raising=False)
    real_open = download._open_url

    def guarded(url, timeout):
        if not url.startswith("file:"):
            raise RuntimeError(f"test tried to open the network URL {url}")
        return real_open(url, timeout)

    monkeypatch.setattr(download, "_open_url", guarded)


# ---------------------------------------------------------------- helpers that write files in the official formats


def idx_bytes(values: np.ndarray, magic: int) -> bytes:
    values = np.asarray(values, dtype=np.uint8)
    return struct.pack(">i", magic) + struct.pack(f">{values.ndim}I", *values.shape) + values.tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def tiny_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def write_idx_dataset(directory: Path, *, n_train: int = 12, n_test: int = 7) -> dict[str, np.ndarray]:
    """Write valid IDX gz files for both splits into ``directory``; return the arrays written."""
    arrays = {
        "train-images-idx3-ubyte.gz": tiny_images(n_train, 1),
        "train-labels-idx1-ubyte.gz": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte.gz": tiny_images(n_test, 2),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, arr in arrays.items():
        write_gz(directory / name, idx_bytes(arr, IMAGES_MAGIC if "images" in name else LABELS_MAGIC))
    return arrays


def trust_files(monkeypatch, dataset: str, directory: Path) -> None:
    """Make the checksum table accept the files the test wrote (the format checks still run)."""
    table = dict(sources.MD5[dataset])
    for path in directory.iterdir():
        if path.is_file():
            table[path.name] = md5_of(path)
    monkeypatch.setitem(sources.MD5, dataset, table)


def cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    payload = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return images, labels, payload


def write_cifar_bins(bin_dir: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    bin_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, name in enumerate([*sources.CIFAR_BINS["train"], *sources.CIFAR_BINS["test"]]):
        images, labels, payload = cifar_records(n, seed)
        (bin_dir / name).write_bytes(payload)
        written[name] = (images, labels)
    (bin_dir / "batches.meta.txt").write_text("\n".join(DATASETS["cifar10"].class_names) + "\n")
    return written


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


# ---------------------------------------------------------------- registry and roots


def test_registry_has_the_four_datasets():
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10"}
    assert dataset_info("cifar10") == DatasetInfo("cifar10", (3, 32, 32), 10, DATASETS["cifar10"].class_names)
    assert dataset_info("mnist").shape == (1, 28, 28)
    assert dataset_info("digits").shape == (1, 8, 8)
    assert DATASETS["fashion-mnist"].class_names[9] == "Ankle boot"
    for info in DATASETS.values():
        assert len(info.class_names) == info.num_classes == 10


def test_inp19_unknown_dataset_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*cifar10.*digits.*fashion-mnist.*mnist"):
        dataset_info("imagenet")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "train", download=False)


def test_unknown_split_raises():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        load_dataset("digits", "val")


def test_resolve_roots_order(tmp_path, monkeypatch):
    cache = tmp_path / "xdg-cache" / "trustlab"
    assert resolve_roots() == [cache]
    monkeypatch.setenv("TRUSTLAB_DATA", str(tmp_path / "env"))
    assert resolve_roots() == [tmp_path / "env", cache]
    assert resolve_roots(tmp_path / "arg") == [tmp_path / "arg", cache]
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_roots(str(tmp_path / "arg"))[-1] == Path.home() / ".cache" / "trustlab"


# ---------------------------------------------------------------- digits and the shared MNIST files


def test_digits_shape_range_labels():
    from sklearn.datasets import load_digits

    x, y = load_dataset("digits", "train")
    xt, yt = load_dataset("digits", "test")
    every = torch.as_tensor(load_digits().target)
    n_test = math.ceil(DIGITS_TEST_FRACTION * len(every))  # train_test_split rounds a fractional test size up
    assert x.shape == (len(every) - n_test, 1, 8, 8) and xt.shape == (n_test, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10)) and set(yt.tolist()) == set(range(10))
    # The test split is fixed (not seeded by the run) and stratified: each class's share of the test images is its
    # share of all digits, to within one image.
    assert torch.equal(load_dataset("digits", "test")[1], yt)
    assert torch.equal(torch.bincount(torch.cat([y, yt])), torch.bincount(every))
    assert float((torch.bincount(yt) - DIGITS_TEST_FRACTION * torch.bincount(every)).abs().max()) < 1


def test_mnist_from_shared_data(shared_data_root):
    x, y = load_dataset("mnist", "train", root=shared_data_root, download=False)
    xt, yt = load_dataset("mnist", "test", root=shared_data_root, download=False)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert xt.shape == (10000, 1, 28, 28) and yt.shape == (10000,)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    assert yt[:5].tolist() == [7, 2, 1, 0, 4]


def test_fashion_mnist_from_shared_data(shared_data_root):
    if not (shared_data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST files not found")
    x, y = load_dataset("fashion-mnist", "test", root=shared_data_root, download=False)
    assert x.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [1000] * 10


# ---------------------------------------------------------------- IDX parsing (files written by the test)


def test_idx_round_trip_from_env_root(tmp_path, monkeypatch):
    arrays = write_idx_dataset(tmp_path / "data" / "mnist")
    trust_files(monkeypatch, "mnist", tmp_path / "data" / "mnist")
    monkeypatch.setenv("TRUSTLAB_DATA", str(tmp_path / "data"))
    x, y = load_dataset("mnist", "test", download=False)
    assert x.shape == (len(arrays["t10k-images-idx3-ubyte.gz"]), 1, 28, 28) and x.dtype == torch.float32
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(x, expected)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()


def test_inp11_md5_mismatch_raises_dataerror(tmp_path):
    write_idx_dataset(tmp_path / "mnist")  # valid IDX, but not the official bytes
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def _corrupt(tmp_path, monkeypatch, name: str, payload: bytes, *, gz: bool = True) -> Path:
    write_idx_dataset(tmp_path / "mnist")
    path = tmp_path / "mnist" / name
    if gz:
        write_gz(path, payload)
    else:
        path.write_bytes(payload)
    trust_files(monkeypatch, "mnist", tmp_path / "mnist")
    return path


def test_inp11_truncated_idx_raises_dataerror(tmp_path, monkeypatch):
    full = idx_bytes(tiny_images(12, 1), IMAGES_MAGIC)
    path = _corrupt(tmp_path, monkeypatch, "train-images-idx3-ubyte.gz", full[: len(full) // 2])
    with pytest.raises(DataError, match=rf"{path.name}: IDX data truncated"):
        load_dataset("mnist", "train", root=tmp_path, download=False)
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(write_gz(tmp_path / "short.gz", full[:10]), IMAGES_MAGIC)
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(write_gz(tmp_path / "long.gz", full + b"\0"), IMAGES_MAGIC)


def test_inp11_truncated_gzip_raises_dataerror(tmp_path, monkeypatch):
    whole = gzip.compress(idx_bytes(tiny_images(12, 1), IMAGES_MAGIC))
    path = _corrupt(tmp_path, monkeypatch, "train-images-idx3-ubyte.gz", whole[: len(whole) // 2], gz=False)
    with pytest.raises(DataError, match=rf"{path.name}: not a valid gzip file or truncated"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_inp11_bad_magic_raises_dataerror(tmp_path, monkeypatch):
    labels = np.arange(12, dtype=np.uint8) % 10
    _corrupt(tmp_path, monkeypatch, "train-labels-idx1-ubyte.gz", idx_bytes(labels, LABELS_MAGIC)[:3] + b"\x02" +
             idx_bytes(labels, LABELS_MAGIC)[4:])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: bad IDX magic number 2050, expected 2049"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_inp11_label_image_count_mismatch_raises_dataerror(tmp_path, monkeypatch):
    _corrupt(tmp_path, monkeypatch, "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(11, np.uint8), LABELS_MAGIC))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: holds 11 labels but .* 12 images"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_inp11_wrong_image_size_raises_dataerror(tmp_path, monkeypatch):
    images = np.zeros((12, 27, 28), np.uint8)
    _corrupt(tmp_path, monkeypatch, "train-images-idx3-ubyte.gz", idx_bytes(images, IMAGES_MAGIC))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: images are 27x28, expected 28x28"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_inp08_label_out_of_range_in_file_raises_dataerror(tmp_path, monkeypatch):
    labels = np.arange(12, dtype=np.uint8) % 10
    labels[4] = 10
    _corrupt(tmp_path, monkeypatch, "train-labels-idx1-ubyte.gz", idx_bytes(labels, LABELS_MAGIC))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: label 10 at index 4 out of range \[0, 10\)"):
        load_dataset("mnist", "train", root=tmp_path, download=False)


def test_inp10_empty_idx_split_raises_valueerror(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "mnist", n_test=0)  # well-formed files holding zero examples
    trust_files(monkeypatch, "mnist", tmp_path / "mnist")
    with pytest.raises(ValueError, match="dataset is empty: mnist test"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


# ---------------------------------------------------------------- downloads (file:// URLs or a failing fetch)


def _serve(tmp_path, monkeypatch, dataset: str = "mnist") -> Path:
    """Write valid files into a 'server' folder and point the mirror and checksum tables at it."""
    server = tmp_path / "server"
    write_idx_dataset(server)
    trust_files(monkeypatch, dataset, server)
    missing = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setitem(sources.MIRRORS, dataset, (missing, server.as_uri() + "/"))
    return server


def test_download_falls_back_to_second_mirror_and_verifies(tmp_path, monkeypatch):
    server = _serve(tmp_path, monkeypatch)
    x, y = load_dataset("mnist", "test", root=tmp_path / "root")
    served = read_idx(server / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)  # the images the mirror holds
    assert torch.equal(x, torch.from_numpy(served.astype(np.float32) / 255).unsqueeze(1))
    got = sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir())
    assert got == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # only the split's files, no .part
    assert md5_of(tmp_path / "root" / "mnist" / got[0]) == md5_of(server / got[0])


def test_download_without_explicit_root_goes_to_cache(tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch)
    load_dataset("mnist", "train")
    assert (tmp_path / "xdg-cache" / "trustlab" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_data01_download_md5_mismatch_leaves_no_file(tmp_path, monkeypatch):
    server = _serve(tmp_path, monkeypatch)
    monkeypatch.setitem(sources.MD5, "mnist", {name: "0" * 32 for name in IDX_NAMES})
    with pytest.raises(DataError, match=r"could not download t10k-images-idx3-ubyte\.gz.*checksum mismatch"):
        load_dataset("mnist", "test", root=tmp_path / "root")
    assert not (tmp_path / "root").exists()  # no final-named file, no temporary file, no folder made for them
    assert server.is_dir()


def test_offline_error_names_files_and_directory(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "_open_url", offline)
    with pytest.raises(DataError, match="could not download") as info:
        load_dataset("fashion-mnist", "train", root=tmp_path / "root")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message
    assert f"{tmp_path / 'root' / 'fashion-mnist'}/" in message
    assert "TRUSTLAB_DATA" in message and "network is unreachable" in message
    assert not any(p.is_file() for p in (tmp_path / "root").rglob("*"))


def test_data01_offline_creates_no_dataset_folder(tmp_path, monkeypatch):
    """root = "/etc" with the network down: no /etc/mnist (nor a cache folder) appears."""
    def offline(url, timeout):
        raise OSError("network is unreachable")

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0\n")
    monkeypatch.setattr(download, "_open_url", offline)
    with pytest.raises(DataError, match="network is unreachable"):
        load_dataset("mnist", "train", root=etc)
    with pytest.raises(DataError, match="network is unreachable"):
        load_dataset("cifar10", "test", root=tmp_path / "new" / "deep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc"]
    assert [p.name for p in etc.iterdir()] == ["passwd"]


def test_data01_download_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    """The mirror answers, writes part of a file, then the connection drops: the folder made for it goes too."""
    class Dropping(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise OSError("connection reset by peer")
            return super().read(3)

    monkeypatch.setattr(download, "_open_url", lambda url, timeout: Dropping(b"partial file"))
    with pytest.raises(DataError, match="connection reset by peer"):
        load_dataset("mnist", "test", root=tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_data01_dataset_is_downloaded_whole_or_not_at_all(tmp_path, monkeypatch):
    """The images arrive, the labels fail on every mirror: the images are removed with the folder made for them,
    while a file that was there before stays."""
    server = _serve(tmp_path, monkeypatch)
    (server / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"could not download t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", "test", root=tmp_path / "root")
    assert not (tmp_path / "root").exists()
    mine = tmp_path / "mine" / "mnist" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    with pytest.raises(DataError, match=r"could not download t10k-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", "test", root=tmp_path / "mine")
    assert [p.name for p in mine.parent.iterdir()] == ["notes.txt"]


def test_download_false_names_files_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz, t10k-labels-idx1-ubyte\.gz into .*mnist/.*"
                                        r"TRUSTLAB_DATA.*download=False"):
        load_dataset("mnist", "test", root=tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR-10 binary version


def test_cifar_bin_round_trip(tmp_path):
    written = write_cifar_bins(tmp_path / "cifar10" / "cifar-10-batches-bin")
    x, y = load_dataset("cifar10", "train", root=tmp_path, download=False)
    xt, yt = load_dataset("cifar10", "test", root=tmp_path, download=False)
    images = np.concatenate([written[n][0] for n in sources.CIFAR_BINS["train"]])
    assert x.shape == images.shape and xt.shape == written["test_batch.bin"][0].shape and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(images.astype(np.float32) / 255))
    assert y.tolist() == np.concatenate([written[n][1] for n in sources.CIFAR_BINS["train"]]).tolist()
    assert yt.dtype == torch.int64 and yt.tolist() == written["test_batch.bin"][1].tolist()
    # Channel-major records: byte 1 + 1024 of a record is the first green pixel.
    raw = (tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    assert round(float(xt[0, 1, 0, 0]) * 255) == raw[1 + 1024]


def test_inp11_cifar_truncated_bin_raises_dataerror(tmp_path):
    bin_dir = tmp_path / "cifar10" / "cifar-10-batches-bin"
    write_cifar_bins(bin_dir)
    path = bin_dir / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_3\.bin: size 61360 bytes is not a multiple of 3073"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)


def test_inp08_cifar_label_out_of_range_raises_dataerror(tmp_path):
    bin_dir = tmp_path / "cifar10" / "cifar-10-batches-bin"
    write_cifar_bins(bin_dir)
    raw = bytearray((bin_dir / "test_batch.bin").read_bytes())
    raw[2 * 3073] = 12
    (bin_dir / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"test_batch\.bin: label 12 in record 2 out of range \[0, 10\)"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def _write_tarball(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            add_bytes(tar, name, payload)
    return path


def test_cifar_tarball_is_verified_and_extracted(tmp_path, monkeypatch):
    written = write_cifar_bins(tmp_path / "src")
    members = {f"cifar-10-batches-bin/{p.name}": p.read_bytes() for p in sorted((tmp_path / "src").iterdir())}
    _write_tarball(tmp_path / "root" / "cifar10" / "cifar-10-binary.tar.gz", members)
    trust_files(monkeypatch, "cifar10", tmp_path / "root" / "cifar10")
    _, yt = load_dataset("cifar10", "test", root=tmp_path / "root", download=False)
    assert yt.tolist() == written["test_batch.bin"][1].tolist()
    extracted = sorted(p.name for p in (tmp_path / "root" / "cifar10" / "cifar-10-batches-bin").iterdir())
    assert extracted == sorted([*written, "batches.meta.txt"])
    assert [p.name for p in (tmp_path / "root" / "cifar10").iterdir() if p.name.startswith(".")] == []


def test_cifar_tarball_md5_mismatch_raises_dataerror(tmp_path):
    _write_tarball(tmp_path / "cifar10" / "cifar-10-binary.tar.gz", {"cifar-10-batches-bin/x.bin": b""})
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz: checksum mismatch"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_sec11_tarball_path_traversal_rejected(tmp_path, monkeypatch):
    dest = tmp_path / "root" / "cifar10"
    tarball = _write_tarball(dest / "cifar-10-binary.tar.gz", {
        "cifar-10-batches-bin/test_batch.bin": cifar_records(2, 0)[2],
        "../evil": b"owned",
    })
    trust_files(monkeypatch, "cifar10", dest)
    with pytest.raises(DataError, match=r"unsafe member path '\.\./evil'"):
        load_dataset("cifar10", "test", root=tmp_path / "root", download=False)
    with pytest.raises(DataError, match="unsafe member path"):
        cifar10.extract_tarball(tarball, dest)
    assert not (tmp_path / "root" / "evil").exists() and not (dest / "evil").exists()
    assert not (dest / "cifar-10-batches-bin").exists()  # nothing extracted at all
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_sec11_tarball_links_and_absolute_paths_rejected(tmp_path):
    link_tar = tmp_path / "link.tar.gz"
    with tarfile.open(link_tar, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(member)
    with pytest.raises(DataError, match="link or special file"):
        cifar10.extract_tarball(link_tar, tmp_path)
    abs_tar = _write_tarball(tmp_path / "abs.tar.gz", {"/tmp/evil-trustlab": b"x"})
    with pytest.raises(DataError, match="unsafe member path '/tmp/evil-trustlab'"):
        cifar10.extract_tarball(abs_tar, tmp_path)


def test_cifar_offline_error_names_tarball_and_directory(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise OSError("no route to host")

    monkeypatch.setattr(download, "_open_url", offline)
    with pytest.raises(DataError, match="could not download") as info:
        load_dataset("cifar10", "train", root=tmp_path)
    message = str(info.value)
    assert f"cifar-10-binary.tar.gz into {tmp_path / 'cifar10'}/" in message
    assert "data_batch_1.bin" in message and "TRUSTLAB_DATA" in message and "no route to host" in message
