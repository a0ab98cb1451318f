"""The low layer under training, evaluation and reports: run folders, records, run identity, atomic writing.

Nothing here imports the rest of trustlab, so every other package can use it without a cycle.
"""

from trustlab.runs.atomic import append_jsonl, atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir
from trustlab.runs.identity import config_hash
from trustlab.runs.records import jsonable, read_json, read_records, versions, write_json, write_records
from trustlab.runs.writer import RunWriter

__all__ = [
    "append_jsonl", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir", "config_hash",
    "jsonable", "read_json", "read_records", "versions", "write_json", "write_records", "RunWriter",
]
