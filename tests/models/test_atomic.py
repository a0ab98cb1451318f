"""trustlab.runs.atomic: crash-safe single-file writes and fsynced JSON-lines appends (DATA-01, DATA-03)."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from trustlab.runs import atomic
from trustlab.runs.atomic import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def test_write_bytes_creates_and_replaces(tmp_path):
    path = tmp_path / "a.bin"
    assert atomic_write_bytes(path, b"one") == path
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert _leftovers(tmp_path) == []


def test_write_text_and_json_format(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode()
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "j.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"


def test_json_refuses_nan_without_touching_file(tmp_path):
    path = tmp_path / "j.json"
    atomic_write_json(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic_write_json(path, {"x": float("nan")})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_wrong_types_raise_typeerror(tmp_path):
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError, match="str"):
        atomic_write_text(tmp_path / "x", b"bytes")


def test_data03_enospc_on_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"v": 1})
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError, match="results.json") as info:
        atomic_write_json(path, {"v": 2})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_data03_enospc_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    atomic_write_bytes(path, b"old contents")
    before = path.read_bytes()
    real_fsync = os.fsync

    def fsync_after_partial(fd):
        os.write(fd, b"partial")  # some bytes reached the temp file before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fsync_after_partial)
    with pytest.raises(OSError, match="model.bin"):
        atomic_write_bytes(path, b"new contents that do not fit")
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_interrupt_mid_write_removes_temp_and_reraises(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def interrupted(src, dst):
        raise KeyboardInterrupt("Ctrl-C during os.replace")

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C during os.replace"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_missing_directory_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        atomic_write_bytes(tmp_path / "nowhere" / "f.bin", b"x")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_replace_keeps_permissions(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    os.chmod(path, 0o640)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_append_jsonl_appends_lines(tmp_path):
    path = tmp_path / "records.jsonl"
    assert append_jsonl(path, [{"i": 0}, {"i": 1}]) == 2
    assert append_jsonl(path, iter([{"i": 2}])) == 1
    assert append_jsonl(path, []) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_append_jsonl_repairs_torn_last_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo')  # a writer killed mid-line
    append_jsonl(path, [{"step": 3}])
    lines = path.read_text().splitlines()
    assert lines[0] == '{"step": 1}'
    assert json.loads(lines[-1]) == {"step": 3}


def test_append_jsonl_failure_truncates_back(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    append_jsonl(path, [{"i": 0}])
    before = path.read_bytes()

    def fsync_after_partial(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fsync_after_partial)
    with pytest.raises(OSError, match="records.jsonl"):
        append_jsonl(path, [{"i": 1}, {"i": 2}])
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_append_jsonl_rejects_bad_rows_before_writing(tmp_path):
    path = tmp_path / "records.jsonl"
    with pytest.raises(TypeError, match="row 1"):
        append_jsonl(path, [{"i": 0}, [1, 2]])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        append_jsonl(path, [{"x": float("inf")}])
    assert not path.exists()
