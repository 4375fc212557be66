"""Every online prediction, one JSON line each, so delayed labels can be joined for online accuracy.

Each worker process appends to its own file per UTC day, with one `write()` per micro-batch, so
writers never interleave and a crash loses at most the batch in flight.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pandas as pd


class PredictionLog:
    """Appends prediction records under `<root>/<pipeline>/<YYYY-MM-DD>/<host>-<pid>.jsonl`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fd: int | None = None
        self._fd_key: tuple[str, str, int] | None = None

    def _file(self, pipeline: str) -> int:
        day = datetime.now(UTC).date().isoformat()
        key = (pipeline, day, os.getpid())
        if self._fd_key != key:
            self.close()
            folder = self.root / pipeline / day
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = folder / f"{socket.gethostname()}-{os.getpid()}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_key = key
        return self._fd

    def write(self, pipeline: str, records: list[dict]) -> None:
        if records:
            os.write(self._file(pipeline), b"".join(orjson.dumps(r) + b"\n" for r in records))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._fd_key = None, None


def read_prediction_log(root: Path, pipeline: str, since: str | None = None) -> pd.DataFrame:
    """Logged predictions of a pipeline (empty frame if none); a torn last line is skipped.

    `since` (an ISO time) skips whole day folders before its day, so a sensor that asks every
    minute does not re-read the whole history.
    """
    records = []
    first_day = since[:10] if since else ""
    for path in sorted((Path(root) / pipeline).glob("*/*.jsonl")):
        if path.parent.name < first_day:
            continue
        for line in path.read_bytes().splitlines():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return pd.DataFrame.from_records(records)
