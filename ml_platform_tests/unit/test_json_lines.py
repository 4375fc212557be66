"""The shared JSON-lines file: time stamps, reading, and the audit trail written through it."""

from __future__ import annotations

import json
from pathlib import Path

from ml_platform.core.json_lines import append_json_line, iso_time, read_json_lines
from ml_platform.resources.audit import record_alias_change


def test_iso_time_is_utc_text_that_sorts():
    assert iso_time(0) == "1970-01-01T00:00:00+00:00"
    assert iso_time(1.2345, timespec="milliseconds") == "1970-01-01T00:00:01.234+00:00"
    assert iso_time(0) < iso_time() and iso_time().endswith("+00:00")


def test_append_and_read_back(tmp_path: Path):
    path = tmp_path / "new" / "log.jsonl"
    assert read_json_lines(path) == []
    assert append_json_line(path, json.dumps({"a": 1}))
    assert not append_json_line(path, json.dumps({"a": 2}), skip_if=lambda: True)
    assert append_json_line(path, json.dumps({"a": 3}))
    assert read_json_lines(path) == [{"a": 1}, {"a": 3}]


def test_audit_records_are_sorted_json_lines(tmp_path: Path):
    path = tmp_path / "audit" / "p.jsonl"
    record = record_alias_change(path, "p", "champion", None, "2", "promoted", {"mae": 1.0}, "r1")
    assert read_json_lines(path) == [record]
    assert list(json.loads(path.read_text())) == sorted(record)
    assert record["from_version"] is None and record["time"].endswith("+00:00")
