"""Append-only audit trail of alias changes: who moved which alias, when, why, with what evidence.

One JSON object per line (`core.json_lines`), so concurrent writers never interleave a record;
read it back with `read_json_lines`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ml_platform.core.json_lines import append_json_line, iso_time


def record_alias_change(
    path: Path,
    model: str,
    alias: str,
    previous: Any,
    to_version: str,
    reason: str,
    evidence: dict[str, Any],
    run_id: str | None,
) -> dict[str, Any]:
    record = {
        "time": iso_time(),
        "model": model,
        "alias": alias,
        "from_version": None if previous is None else str(getattr(previous, "version", previous)),
        "to_version": str(to_version),
        "reason": reason,
        "evidence": evidence,
        "dagster_run_id": run_id,
    }
    append_json_line(path, json.dumps(record, sort_keys=True))
    return record
