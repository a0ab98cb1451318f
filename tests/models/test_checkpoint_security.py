"""trustlab.checkpoint: safe formats, integrity, strict loading, crash-safe run folders.

Test IDs follow reliability-tests.md: SEC-01, SEC-02, SEC-04..07, INP-12, DATA-02, DATA-10.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import random
import struct
import tracemalloc

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import trustlab.checkpoint.load as ckpt_load
import trustlab.checkpoint.manifest as ckpt_manifest
import trustlab.checkpoint.rundir as ckpt_rundir
import trustlab.checkpoint.save as ckpt_save
from trustlab.checkpoint import (
    FORMAT_VERSION,
    SIGNING_KEY_ENV,
    canonical_sha256,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from trustlab.errors import CheckpointError
from trustlab.models import MODELS, build_model

DIGITS = {"name": "mlp", "in_shape": (1, 8, 8), "num_classes": 10}
CONFIG = {"lr": 0.01, "eps": 0.3, "seed": 0, "layers": [1, 2]}
SEC04_SHAPES = {"mlp": (1, 28, 28), "mlp-1x50": (1, 28, 28), "mlp-1x100": (1, 28, 28), "mlp-2x100": (1, 28, 28),
                "mlp-3x100": (1, 28, 28), "cnn-small": (1, 28, 28), "cnn-small-quantized": (1, 28, 28), "cnn-large": (1, 28, 28), "preact-resnet18": (3, 8, 8)}


class _Killed(BaseException):
    """Stands in for SIGKILL at a chosen point (BaseException, so ordinary `except Exception` cannot eat it)."""


class _Evil:
    """Unpickling this touches ``marker``: the FX-EVIL payload."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _model(arch=DIGITS, seed=0):
    return build_model(arch["name"], in_shape=arch["in_shape"], num_classes=arch["num_classes"], seed=seed)


def _save(directory, arch=DIGITS, *, seed=0, state=None):
    model = _model(arch, seed)
    save_checkpoint(directory, model, arch=arch, dataset="digits", config=CONFIG, state=state)
    return model


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _replace_file(directory, filename, data):
    """Write ``data`` as ``filename`` and re-sign the manifest, so that the parser behind the checksum runs."""
    (directory / filename).write_bytes(data)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][filename] = hashlib.sha256(data).hexdigest()
    manifest["sizes"][filename] = len(data)
    _resign(directory, manifest)


def _resign(directory, manifest):
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = canonical_sha256(body)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _safetensors_bytes(header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _assert_same_tree(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tree(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------------------------------------------------- SEC-01


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["raw-pickle", "torch-save-zip"])
@pytest.mark.parametrize("force_no_weights_only", [False, True])
def test_sec01_malicious_state_pt_is_not_executed(tmp_path, monkeypatch, container, force_no_weights_only):
    if force_no_weights_only:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    directory = tmp_path / "ckpt"
    _save(directory, state={"epoch": 1})

    def payload(marker):
        obj = {"epoch": _Evil(marker)}
        if container == "raw-pickle":
            return pickle.dumps(obj)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    control = tmp_path / "control-marker"  # positive control: the payload really runs when fully unpickled
    if container == "raw-pickle":
        pickle.loads(payload(control))
    else:
        torch.load(io.BytesIO(payload(control)), weights_only=False)
    assert control.exists()

    marker = tmp_path / "marker"
    _replace_file(directory, "state.pt", payload(marker))
    with pytest.raises(CheckpointError, match=r"state\.pt is not a safe trustlab state file"):
        load_checkpoint(directory)
    assert not marker.exists()


@pytest.mark.parametrize("container", ["raw-pickle", "torch-save-zip"])
def test_sec01_pickled_state_is_one_line_of_ours(tmp_path, recwarn, container):
    """Not torch's several lines of advice to retry with weights_only=False, nor its pickle-protocol warning."""
    _save(tmp_path, state={"epoch": 1})
    obj = {"epoch": pathlib.Path("/x")}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _replace_file(tmp_path, "state.pt", pickle.dumps(obj) if container == "raw-pickle" else buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"state\.pt is not a safe trustlab state file and was not written by "
                                              r"trustlab \(weights-only loader: Unsupported") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert [str(w.message) for w in recwarn] == []


# ---------------------------------------------------------------------------------------------------------- SEC-02


def test_sec02_single_weights_only_call_and_no_fallback(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, state={"epoch": 1})
    calls = []

    def refusing_load(*args, **kwargs):
        calls.append(kwargs)
        raise pickle.UnpicklingError("Weights only load failed")

    monkeypatch.setattr(torch, "load", refusing_load)
    with pytest.raises(CheckpointError, match="not a safe trustlab state file"):
        load_checkpoint(directory)
    assert len(calls) == 1
    assert calls[0]["weights_only"] is True
    assert str(calls[0]["map_location"]) == "cpu"


# ---------------------------------------------------------------------------------------------------------- SEC-04


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sec04_round_trip_is_bitwise(tmp_path, name):
    arch = {"name": name, "in_shape": SEC04_SHAPES[name], "num_classes": 10}
    model = _model(arch, seed=1)
    model.train()(torch.rand(4, *arch["in_shape"], generator=torch.Generator().manual_seed(0)))  # move BN stats
    save_checkpoint(tmp_path, model, arch=arch, dataset="x", config={})

    loaded = load_checkpoint(tmp_path).model
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key
    assert not loaded.training

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())


def test_sec04_float64_model_round_trips(tmp_path):
    model = _model().double()
    save_checkpoint(tmp_path, model, arch=DIGITS, dataset="digits", config={})
    loaded = load_checkpoint(tmp_path).model
    assert _same(model.state_dict(), loaded.state_dict())
    assert loaded[1].weight.dtype == torch.float64


def test_sec04_state_round_trips_adam_and_rngs(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    state = {
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "global_step": 120,
        "torch_rng": g.get_state(),
        "python_rng": random.Random(0).getstate(),
        "numpy_rng": np.random.default_rng(0).bit_generator.state,
        "note": None,
    }
    save_checkpoint(tmp_path, model, arch=DIGITS, dataset="digits", config=CONFIG, state=state)

    direct = torch.load(tmp_path / "state.pt", weights_only=True)  # no add_safe_globals needed
    _assert_same_tree(direct, state)
    restored = load_checkpoint(tmp_path)
    _assert_same_tree(restored.state, state)

    opt2 = torch.optim.Adam(restored.model.parameters(), lr=1e-3)
    opt2.load_state_dict(restored.state["optimizer"])
    for m, o in ((model, opt), (restored.model.train(), opt2)):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    assert _same(model.state_dict(), restored.model.state_dict())


def test_sec04_manifest_contents(tmp_path):
    _save(tmp_path, state={"epoch": 0})
    manifest = verify_checkpoint(tmp_path)
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["arch"] == {"name": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}
    assert manifest["dataset"] == "digits"
    assert manifest["config"] == CONFIG
    assert manifest["config_hash"] == canonical_sha256(CONFIG)
    assert set(manifest["versions"]) == {"trustlab", "torch", "python"}
    assert manifest["created"].endswith("+00:00")
    for name in ("model.safetensors", "state.pt"):
        assert manifest["files"][name] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert manifest["sizes"][name] == (tmp_path / name).stat().st_size


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"rng": np.random.RandomState(0).get_state()}, r"state\['rng'\]\[1\]"),
        ({"sched": object()}, r"state\['sched'\]"),
        ({"opt": {"lr": np.float32(0.1)}}, r"state\['opt'\]\['lr'\]"),
        ({"x": {(1, 2): 3}}, r"state\['x'\] has a key"),
    ],
)
def test_sec04_save_refuses_non_primitive_state(tmp_path, state, where):
    with pytest.raises(TypeError, match=where):
        _save(tmp_path, state=state)
    assert not (tmp_path / "manifest.json").exists()


def test_save_refuses_model_that_does_not_match_arch(tmp_path):
    model = _model({"name": "cnn-small", "in_shape": (1, 8, 8), "num_classes": 10})
    with pytest.raises(ValueError, match="missing keys"):
        save_checkpoint(tmp_path, model, arch=DIGITS, dataset="digits", config={})
    with pytest.raises(ValueError, match="unknown model 'os.system'"):
        save_checkpoint(tmp_path, model, arch={**DIGITS, "name": "os.system"}, dataset="digits", config={})


def test_save_refuses_nonfinite_weights(tmp_path):
    model = _model()
    with torch.no_grad():
        model[3].bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf in \[3\.bias\]"):
        save_checkpoint(tmp_path, model, arch=DIGITS, dataset="digits", config={})
    assert not (tmp_path / "manifest.json").exists()


def test_load_leaves_global_rng_alone(tmp_path):
    _save(tmp_path, state={"epoch": 0})
    before = torch.get_rng_state()
    load_checkpoint(tmp_path)
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------------------- SEC-05

_F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
SEC05_CASES = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "header-longer-than-file": lambda good: struct.pack("<Q", len(good) + 1000) + good[8:],
    "header-over-100MB": lambda good: struct.pack("<Q", 200_000_000) + b"{}",
    "non-json-header": lambda good: _safetensors_bytes(b"this is not json"),
    "offsets-out-of-range": lambda good: _safetensors_bytes({"w": {**_F32x2, "data_offsets": [0, 8000]}}, bytes(8)),
    "offsets-overlapping": lambda good: _safetensors_bytes({"a": _F32x2, "b": _F32x2}, bytes(8)),
    "shape-times-dtype-not-span": lambda good: _safetensors_bytes({"w": {**_F32x2, "shape": [3]}}, bytes(8)),
    "duplicate-names": lambda good: _safetensors_bytes(
        b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
        b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
        bytes(8),
    ),
    "metadata-not-strings": lambda good: _safetensors_bytes({"__metadata__": {"epoch": 1}, "w": _F32x2}, bytes(8)),
}


def _tampered_weights(kind):
    weights = {k: v.clone() for k, v in _model(seed=0).state_dict().items()}
    if kind == "last-tensor-wrong-shape":  # every other key would load: a naive loader half-loads the model
        weights["5.weight"] = torch.zeros(9, 256)
    elif kind == "nan-weight":
        weights["3.weight"][0, 0] = float("nan")
    return safetensors.torch.save(weights)


@pytest.mark.parametrize("case", [*SEC05_CASES, "last-tensor-wrong-shape", "nan-weight"])
def test_sec05_hostile_safetensors_rejected_cleanly(tmp_path, case):
    directory = tmp_path / "ckpt"
    _save(directory)
    good = (directory / "model.safetensors").read_bytes()
    bad = SEC05_CASES[case](good) if case in SEC05_CASES else _tampered_weights(case)
    _replace_file(directory, "model.safetensors", bad)

    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(directory)
    target = _model(seed=5)
    before = _params(target)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_weights(directory, target)
    assert _same(_params(target), before)


# ---------------------------------------------------------------------------------------------------------- SEC-06


@pytest.mark.parametrize("filename", ["model.safetensors", "state.pt"])
def test_sec06_flipped_byte_is_checksum_mismatch(tmp_path, filename):
    _save(tmp_path, state={"epoch": 1, "t": torch.arange(5)})
    data = bytearray((tmp_path / filename).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / filename).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checksum mismatch for .*{filename}"):
        load_checkpoint(tmp_path)
    target = _model(seed=5)
    before = _params(target)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_weights(tmp_path, target)
    assert _same(_params(target), before)


def test_sec06_edited_manifest_is_checksum_mismatch(tmp_path):
    _save(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"digits"', b'"eigits"'))
    with pytest.raises(CheckpointError, match=r"checksum mismatch for .*manifest\.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("check", [load_checkpoint, verify_checkpoint])
def test_sec06_padded_file_is_refused_before_it_is_read(tmp_path, check):
    """A file larger than the manifest says is refused from its size alone: 64 MiB of (sparse) padding is never
    read into memory."""
    _save(tmp_path, state={"epoch": 1})
    path = tmp_path / "model.safetensors"
    size = path.stat().st_size
    os.truncate(path, size + (64 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=rf"size mismatch for .*model\.safetensors: {size + (64 << 20)} "
                                                  rf"bytes, the manifest lists {size}"):
            check(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_sec06_verify_hashes_in_blocks(tmp_path, monkeypatch):
    """verify_checkpoint never holds a whole file: it hashes in blocks (made small here, so a small file shows it)."""
    _save(tmp_path, CNN)
    size = (tmp_path / "model.safetensors").stat().st_size
    monkeypatch.setattr(ckpt_manifest, "_READ_BLOCK", 4096)
    tracemalloc.start()
    try:
        verify_checkpoint(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4


def test_sec06_manifest_without_sizes_still_loads(tmp_path):
    """Manifests written before sizes were recorded are accepted (their files are still hashed)."""
    model = _save(tmp_path, state={"epoch": 1})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["sizes"]
    _resign(tmp_path, manifest)
    assert _same(_params(load_checkpoint(tmp_path).model), _params(model))
    (tmp_path / "state.pt").write_bytes((tmp_path / "state.pt").read_bytes() + b"x")
    with pytest.raises(CheckpointError, match=r"checksum mismatch for .*state\.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("sizes", [{"model.safetensors": -1, "state.pt": 1}, {"model.safetensors": 5}, [1, 2]])
def test_sec06_malformed_sizes_are_refused(tmp_path, sizes):
    _save(tmp_path, state={"epoch": 1})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["sizes"] = sizes
    _resign(tmp_path, manifest)
    with pytest.raises(CheckpointError, match="malformed sizes"):
        load_checkpoint(tmp_path)


def test_sec06_huge_manifest_is_refused_unparsed(tmp_path):
    _save(tmp_path)
    os.truncate(tmp_path / "manifest.json", 17 << 20)
    with pytest.raises(CheckpointError, match=r"manifest\.json is larger than 16777216 bytes"):
        load_checkpoint(tmp_path)


def test_sec06_signed_checkpoint_verifies_with_its_key(tmp_path):
    model = _save_signed(tmp_path, "my secret")
    assert _same(_params(load_checkpoint(tmp_path, key="my secret").model), _params(model))
    assert _same(_params(load_checkpoint(tmp_path, key=b"my secret").model), _params(model))
    assert verify_checkpoint(tmp_path, key="my secret")["signature"]["alg"] == "hmac-sha256"
    assert load_checkpoint(tmp_path).model is not None  # without a key, nothing changes


def test_sec06_tampered_manifest_passes_the_checksum_but_not_the_signature(tmp_path):
    """The sha256 detects corruption, not tampering: recomputed, it passes; only the key's signature catches it."""
    _save_signed(tmp_path, "my secret")
    evil = _model(seed=7)
    _replace_file(tmp_path, "model.safetensors", safetensors.torch.save(_params(evil)))  # recomputes the sha256s
    assert _same(_params(load_checkpoint(tmp_path).model), _params(evil))
    with pytest.raises(CheckpointError, match=r"signature mismatch for .*manifest\.json: it was signed with another "
                                              r"key, or altered since"):
        load_checkpoint(tmp_path, key="my secret")


def test_sec06_wrong_key_and_unsigned_are_refused(tmp_path, monkeypatch):
    _save_signed(tmp_path / "signed", "my secret")
    with pytest.raises(CheckpointError, match="signature mismatch"):
        load_checkpoint(tmp_path / "signed", key="not my secret")
    _save(tmp_path / "unsigned")
    with pytest.raises(CheckpointError, match=r"manifest\.json is not signed, but a signing key was given"):
        verify_checkpoint(tmp_path / "unsigned", key="my secret")
    monkeypatch.setenv(SIGNING_KEY_ENV, "my secret")  # the environment variable is a key too
    with pytest.raises(CheckpointError, match="is not signed"):
        load_checkpoint(tmp_path / "unsigned")
    assert load_checkpoint(tmp_path / "signed").model is not None
    with pytest.raises(ValueError, match="key must not be empty"):
        load_checkpoint(tmp_path / "signed", key="")


def test_sec06_commit_signs_with_the_environment_key(tmp_path, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, "env secret")
    directory = commit_checkpoint(tmp_path, "step_1", _model(), arch=DIGITS, dataset="digits", config=CONFIG)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    assert load_checkpoint(directory, key="env secret").model is not None
    with pytest.raises(CheckpointError, match="signature mismatch"):
        load_checkpoint(directory, key="my secret")


def _save_signed(directory, key):
    model = _model()
    save_checkpoint(directory, model, arch=DIGITS, dataset="digits", config=CONFIG, key=key)
    return model


@pytest.mark.parametrize("filename", ["model.safetensors", "state.pt"])
def test_sec06_deleted_file_is_incomplete(tmp_path, filename):
    _save(tmp_path, state={"epoch": 1})
    (tmp_path / filename).unlink()
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint .*missing {filename}"):
        load_checkpoint(tmp_path)


def test_sec06_missing_manifest_or_directory(tmp_path):
    _save(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no valid checkpoint found at"):
        load_checkpoint(tmp_path / "a")
    with pytest.raises(CheckpointError, match="no valid checkpoint found at .*nope"):
        load_checkpoint(tmp_path / "nope")


def test_newer_format_version_is_refused(tmp_path):
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    _resign(tmp_path, manifest)
    with pytest.raises(CheckpointError, match="format version 2, newer than this trustlab"):
        load_checkpoint(tmp_path)


def test_unknown_arch_in_manifest_is_refused(tmp_path):
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["arch"]["name"] = "os.system"
    _resign(tmp_path, manifest)
    with pytest.raises(CheckpointError, match="unknown architecture 'os.system'"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("in_shape", [1, 100_000, 100_000], r"in_shape \[1, 100000, 100000\] is out of bounds"),
        ("in_shape", [1, 1e5, 1e5], "in_shape must be three ints"),
        ("in_shape", [1, 8.0, 8], "in_shape must be three ints"),
        ("in_shape", [1, 4097, 1], "out of bounds"),
        ("num_classes", 10**9, r"num_classes must be an int in \[2, 100000\]"),
        ("num_classes", 10.0, "num_classes must be an int"),
    ],
)
def test_inp12_manifest_arch_is_bounded_before_anything_is_built(tmp_path, monkeypatch, field, value, message):
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["arch"][field] = value
    _resign(tmp_path, manifest)
    monkeypatch.setattr(ckpt_load, "build_model", _never_called)
    monkeypatch.setattr(ckpt_save, "build_model", _never_called)  # not even on the meta device
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_inp12_arch_the_weights_do_not_fit_is_refused_without_allocating(tmp_path, monkeypatch):
    """[1, 1000, 1000] is within the bounds but makes a 1 GB MLP: it is compared on the meta device first."""
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["arch"]["in_shape"] = [1, 1000, 1000]
    _resign(tmp_path, manifest)
    monkeypatch.setattr(ckpt_load, "build_model", _never_called)
    with pytest.raises(CheckpointError, match=r"size-mismatched keys \[1\.weight: checkpoint \(256, 64\) vs model "
                                              r"\(256, 1000000\)\]"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", None, r"missing or mistyped fields: dataset \(NoneType\)"),
        ("config", [], r"config \(list\)"),
        ("config_hash", "x", "malformed config_hash"),
        ("created", 5, r"created \(int\)"),
        ("files", {"model.safetensors": "0" * 63}, "malformed checksums"),
    ],
)
def test_inp12_manifest_fields_have_a_schema(tmp_path, field, value, message):
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest[field] = value
    _resign(tmp_path, manifest)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_save_refuses_an_arch_load_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be an int in"):
        save_checkpoint(tmp_path, _model(), arch={**DIGITS, "num_classes": 10**6}, dataset="digits", config=CONFIG)


def _never_called(*args, **kwargs):
    raise AssertionError("a model was built from an arch that should have been refused")


def test_manifest_cannot_list_other_files(tmp_path):
    _save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"]["../../etc/passwd"] = "0" * 64
    _resign(tmp_path, manifest)
    with pytest.raises(CheckpointError, match="unknown files"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------------------- SEC-07


def test_sec07_old_torch_refuses_to_unpickle(tmp_path, monkeypatch):
    _save(tmp_path, state={"epoch": 1})
    calls = []
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k))
    with pytest.raises(CheckpointError, match="torch >= 2.10"):
        load_checkpoint(tmp_path)
    assert calls == []


# ---------------------------------------------------------------------------------------------------------- INP-12

CNN = {"name": "cnn-small", "in_shape": (1, 28, 28), "num_classes": 10}


@pytest.mark.parametrize(
    ("expected", "differing"),
    [
        ({**CNN, "name": "mlp"}, "['name']"),
        ({**CNN, "num_classes": 5}, "['num_classes']"),
        ({"name": "cnn-large", "in_shape": [3, 32, 32]}, "['name', 'in_shape']"),
    ],
)
def test_inp12_expected_arch_mismatch_lists_keys(tmp_path, expected, differing):
    _save(tmp_path, CNN)
    with pytest.raises(CheckpointError, match="differing keys " + differing.replace("[", r"\[").replace("]", r"\]")):
        load_checkpoint(tmp_path, expected_arch=expected)
    assert load_checkpoint(tmp_path, expected_arch={"name": "cnn-small", "in_shape": (1, 28, 28)}).model


def test_inp12_extra_and_missing_keys_listed(tmp_path):
    _save(tmp_path, CNN)
    weights = safetensors.torch.load((tmp_path / "model.safetensors").read_bytes())
    del weights["0.bias"]
    weights["extra.weight"] = torch.zeros(3)
    weights["7.weight"] = torch.zeros(9, 100)
    _replace_file(tmp_path, "model.safetensors", safetensors.torch.save(weights))
    with pytest.raises(CheckpointError, match=r"missing keys \[0\.bias\]") as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "unexpected keys [extra.weight]" in message
    assert "size-mismatched keys [7.weight: checkpoint (9, 100) vs model (10, 100)]" in message


@pytest.mark.parametrize(
    "other", [{"name": "mlp", "in_shape": (1, 28, 28), "num_classes": 10}, {**CNN, "num_classes": 5}]
)
def test_inp12_load_weights_into_other_model_is_refused_and_harmless(tmp_path, other):
    _save(tmp_path, CNN)
    target = _model(other, seed=3)
    before = _params(target)
    with pytest.raises(CheckpointError, match="does not match"):
        load_weights(tmp_path, target)
    assert _same(_params(target), before)


def test_inp12_not_a_checkpoint(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no valid checkpoint found"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no valid checkpoint found"):
        load_checkpoint(tmp_path / "d")


# ---------------------------------------------------------------------------------------------------------- DATA-02


def _commit(run, name, seed, **kwargs):
    model = _model(seed=seed)
    commit_checkpoint(run, name, model, arch=DIGITS, dataset="digits", config=CONFIG, state={"seed": seed}, **kwargs)
    return model


def test_data02_crash_before_pointer_flip_keeps_previous(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    first = _commit(run, "step_1", seed=1)
    real_write_json = ckpt_rundir.atomic_write_json

    def killed_at_flip(path, obj):
        if pathlib.Path(path).name == "latest.json":
            raise _Killed("killed at the latest.json flip")
        return real_write_json(path, obj)

    monkeypatch.setattr(ckpt_rundir, "atomic_write_json", killed_at_flip)  # commit_checkpoint flips latest.json
    with pytest.raises(_Killed, match="killed at the latest.json flip"):
        _commit(run, "step_2", seed=2)
    monkeypatch.undo()

    assert (run / "checkpoints" / "step_2").is_dir()  # complete, but never made latest
    latest = latest_checkpoint(run)
    assert latest == run / "checkpoints" / "step_1"
    restored = load_checkpoint(latest)
    assert _same(restored.model.state_dict(), first.state_dict())
    assert restored.state == {"seed": 1}

    retried = _commit(run, "step_2", seed=22)  # the resumed run re-commits the same name
    assert latest_checkpoint(run).name == "step_2"
    assert _same(load_checkpoint(latest_checkpoint(run)).model.state_dict(), retried.state_dict())


def test_data02_crash_while_writing_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _commit(run, "step_1", seed=1)
    real_write_bytes = ckpt_save.atomic_write_bytes

    def killed_at_state(path, data):
        if pathlib.Path(path).name == "state.pt":
            raise _Killed("killed writing state.pt")
        return real_write_bytes(path, data)

    monkeypatch.setattr(ckpt_save, "atomic_write_bytes", killed_at_state)  # save_checkpoint writes state.pt
    with pytest.raises(_Killed, match="killed writing state.pt"):
        _commit(run, "step_2", seed=2)
    monkeypatch.undo()
    assert latest_checkpoint(run).name == "step_1"
    assert not (run / "checkpoints" / "step_2").exists()

    # What a real SIGKILL leaves behind (no cleanup ran): a half-written temp dir and a temp pointer file.
    stale = run / "checkpoints" / ".step_2.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / ".latest.json.0a1b2c.tmp").write_text('{"na')
    verify_checkpoint(latest_checkpoint(run))
    _commit(run, "step_2", seed=2)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert latest_checkpoint(run).name == "step_2"


def test_data02_recommitting_latest_name_is_refused(tmp_path):
    run = tmp_path / "run"
    _commit(run, "step_1", seed=1)
    with pytest.raises(FileExistsError, match="step_1"):
        _commit(run, "step_1", seed=2)
    assert latest_checkpoint(run).name == "step_1"


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x.tmp", "", "latest.json", "a\nb", "a\0b"])
def test_data02_bad_checkpoint_names(tmp_path, name):
    with pytest.raises(ValueError, match="checkpoint name"):
        _commit(tmp_path / "run", name, seed=0)


def test_data02_broken_pointer(tmp_path):
    run = tmp_path / "run"
    _commit(run, "step_1", seed=1)
    pointer = run / "checkpoints" / "latest.json"
    pointer.write_text(json.dumps({"name": "../../elsewhere"}))
    with pytest.raises(CheckpointError, match="corrupt"):
        latest_checkpoint(run)
    pointer.write_text(json.dumps({"name": "step_9"}))
    with pytest.raises(CheckpointError, match="names 'step_9' but .* is missing"):
        latest_checkpoint(run)
    pointer.write_text(json.dumps({"name": "step_1"}))
    (run / "checkpoints" / "step_1" / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        latest_checkpoint(run)


# ---------------------------------------------------------------------------------------------------------- DATA-10


def _names(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


def test_data10_keep_last(tmp_path):
    run = tmp_path / "run"
    for i in range(1, 5):
        _commit(run, f"step_{i}", seed=i, keep_last=2)
    assert _names(run) == ["step_3", "step_4"]
    assert latest_checkpoint(run).name == "step_4"


def test_data10_never_deletes_latest(tmp_path):
    run = tmp_path / "run"
    for i in range(1, 4):
        _commit(run, f"step_{i}", seed=i, keep_last=None)
    ckpt_rundir.atomic_write_json(run / "checkpoints" / "latest.json", {"name": "step_1"})  # e.g. a manual rollback
    assert prune_checkpoints(run, keep_last=1) == ["step_2"]
    assert _names(run) == ["step_1", "step_3"]
    assert latest_checkpoint(run).name == "step_1"


def test_data10_kill_during_deletion_leaves_valid_latest(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _commit(run, "step_1", seed=1, keep_last=1)
    real_rmtree = ckpt_rundir.shutil.rmtree

    def killed_mid_delete(path, *args, **kwargs):
        if pathlib.Path(path).exists():
            raise _Killed("killed deleting an old checkpoint")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_rundir.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(_Killed, match="killed deleting an old checkpoint"):
        _commit(run, "step_2", seed=2, keep_last=1)
    monkeypatch.undo()
    verify_checkpoint(latest_checkpoint(run))
    assert latest_checkpoint(run).name == "step_2"
    _commit(run, "step_3", seed=3, keep_last=1)
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == ["step_3"]


@pytest.mark.parametrize("keep_last", [0, -1, 1.5, True])
def test_data10_bad_keep_last(tmp_path, keep_last):
    with pytest.raises(ValueError, match="keep_last"):
        _commit(tmp_path / "run", "step_1", seed=0, keep_last=keep_last)
