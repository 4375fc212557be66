"""Append-only audit trail of alias changes: who moved which alias, when, why, with what evidence.

One JSON object per line. Appends of a single line are atomic on POSIX for lines this size, so
concurrent writers never interleave a record.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


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
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "alias": alias,
        "from_version": None if previous is None else str(getattr(previous, "version", previous)),
        "to_version": str(to_version),
        "reason": reason,
        "evidence": evidence,
        "dagster_run_id": run_id,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return record


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
