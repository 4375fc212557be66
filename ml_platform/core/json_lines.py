"""Append-only JSON-lines files (the alias audit trail, the alert sink) and their time stamps.

Plain Python, no pandas and no dagster, so every layer can write a record cheaply.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def append_json_line(
    path: Path, document: str, *, skip_if: Callable[[], bool] | None = None
) -> bool:
    """Append one JSON document as a line unless `skip_if()` says so; True if written.

    The line goes out in a single `write` on an `O_APPEND` descriptor, so concurrent writers never
    interleave and a crash leaves either the whole line or nothing. `skip_if` (a dedupe check that
    reads the file) and the write happen under an exclusive `flock`, so no other writer can add
    the same record in between.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = (document + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if skip_if is not None and skip_if():
            return False
        os.write(fd, line)
        return True
    finally:
        os.close(fd)  # closing releases the lock


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """Every record in the file, oldest first (an absent file has none)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def iso_time(timestamp: float | None = None, *, timespec: str = "seconds") -> str:
    """UTC ISO-8601 of `timestamp` (default: now), so records sort and compare as text."""
    moment = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec=timespec)
