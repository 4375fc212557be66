"""Online feature store backends: the latest feature row per entity, for real-time serving.

Plain Python (no dagster), so the batch asset and the serving app share one implementation. SQLite
is the embedded default; Redis backs it in production. Both keep the same contract:

- a row is stored as the JSON of the offline feature row, so online and batch features are the
  same values (floats round-trip exactly through JSON);
- an upsert only replaces an entity's row with one from the same or a newer feature day, so a
  backfill of old partitions never overwrites fresher features.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import pandas as pd

from ml_platform.specs import PipelineSpec

# (entity id, feature day "YYYY-MM-DD", row JSON)
StoredRow = tuple[str, str, str]
REDIS_CHUNK = 2000

_REDIS_UPSERT = """
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[2], ARGV[i])
  if (not current) or current <= ARGV[i + 1] then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return #ARGV / 3
"""


class StoreUnavailableError(RuntimeError):
    """The store cannot answer yet (nothing written, or the server is down): a 503, not a 500."""


class FeatureStore(Protocol):
    """What the `features` asset writes through and the serving app reads from."""

    def upsert(self, pipeline: str, rows: Iterable[StoredRow]) -> None: ...

    def get(self, pipeline: str, entity_ids: list[str]) -> list[str | None]: ...

    def probe(self) -> None:
        """Raise `StoreUnavailableError` unless the store can be read right now (cheap)."""

    def close(self) -> None: ...


class SqliteFeatureStore:
    """One SQLite file in WAL mode: one writer (the asset) and any number of readers."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if read_only:
            self._open_reader()  # the server may start before `features` has written anything
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS features (pipeline TEXT NOT NULL, entity TEXT NOT NULL,"
                " feature_day TEXT NOT NULL, row TEXT NOT NULL, PRIMARY KEY (pipeline, entity))"
            )

    def upsert(self, pipeline: str, rows: Iterable[StoredRow]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO features VALUES (?, ?, ?, ?) ON CONFLICT(pipeline, entity) DO UPDATE"
                " SET feature_day = excluded.feature_day, row = excluded.row"
                " WHERE excluded.feature_day >= features.feature_day",
                [(pipeline, *row) for row in rows],
            )

    def _open_reader(self) -> sqlite3.Connection | None:
        if self._conn is None and self.path.exists():
            self._conn = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
        return self._conn

    def get(self, pipeline: str, entity_ids: list[str]) -> list[str | None]:
        if not entity_ids:
            return []
        found: dict[str, str] = {}
        with self._lock:
            if self._open_reader() is None:
                raise StoreUnavailableError(
                    f"the online store {self.path} does not exist yet: materialise `features`"
                )
            try:
                for start in range(0, len(entity_ids), 900):  # SQLite's bound-parameter limit
                    chunk = entity_ids[start : start + 900]
                    found.update(
                        self._conn.execute(
                            "SELECT entity, row FROM features WHERE pipeline = ? AND entity IN "
                            f"({','.join('?' * len(chunk))})",
                            [pipeline, *chunk],
                        ).fetchall()
                    )
            except sqlite3.Error as exc:  # corrupt or unreadable: a 503 that says so, not a 500
                raise StoreUnavailableError(
                    f"the online store {self.path} cannot be read: {exc}"
                ) from exc
        return [found.get(i) for i in entity_ids]

    def probe(self) -> None:
        with self._lock:
            if self._open_reader() is None:
                raise StoreUnavailableError(
                    f"the online store {self.path} does not exist yet: materialise `features`"
                )
            try:
                self._conn.execute("SELECT 1 FROM features LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailableError(
                    f"the online store {self.path} cannot be read: {exc}"
                ) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class RedisFeatureStore:
    """Two hashes per pipeline: entity -> row JSON, and entity -> feature day (for newer-wins)."""

    def __init__(self, url: str, namespace: str = "ml_platform:online") -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._upsert = self._client.register_script(_REDIS_UPSERT)
        self.namespace = namespace

    def _keys(self, pipeline: str) -> list[str]:
        return [f"{self.namespace}:{pipeline}:rows", f"{self.namespace}:{pipeline}:days"]

    def upsert(self, pipeline: str, rows: Iterable[StoredRow]) -> None:
        rows = list(rows)
        for start in range(0, len(rows), REDIS_CHUNK):
            args = [value for row in rows[start : start + REDIS_CHUNK] for value in row]
            self._upsert(keys=self._keys(pipeline), args=args)

    def get(self, pipeline: str, entity_ids: list[str]) -> list[str | None]:
        if not entity_ids:
            return []
        import redis

        try:
            values = self._client.hmget(self._keys(pipeline)[0], entity_ids)
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"the Redis online store is unavailable: {exc}") from exc
        return [None if v is None else v.decode() for v in values]

    def probe(self) -> None:
        import redis

        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailableError(f"the Redis online store is unavailable: {exc}") from exc

    def clear(self, pipeline: str) -> None:
        self._client.delete(*self._keys(pipeline))

    def close(self) -> None:
        self._client.close()


def open_feature_store(url: str, read_only: bool = False) -> FeatureStore:
    """`sqlite:////abs/path.sqlite` (embedded default) or `redis://host:port/db` (production)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SqliteFeatureStore(Path(url.removeprefix("sqlite:///")), read_only=read_only)
    if scheme in {"redis", "rediss", "unix"}:
        return RedisFeatureStore(*_redis_namespace(url))
    raise ValueError(f"unsupported online store URL {url!r}: use sqlite:///PATH or redis://HOST")


def _redis_namespace(url: str) -> tuple[str, str]:
    """`redis://host/db?namespace=team_a` keeps one deployment's (or test's) keys apart from
    another's on a shared server; redis-py does not know the option, so it is taken out."""
    from urllib.parse import parse_qsl, urlencode

    parts = urlparse(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "namespace"]
    if not names:
        return url, "ml_platform:online"
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return parts._replace(query=rest).geturl(), names[-1]


def entity_id(spec: PipelineSpec, row: dict) -> str:
    """The one string key of an entity, shared by the store, routing and the prediction log."""
    return "|".join(str(row[k]) for k in spec.entity_keys)


def latest_rows(spec: PipelineSpec, features: pd.DataFrame) -> list[StoredRow]:
    """Each entity's newest feature row, encoded for the online store."""
    if features.empty:
        return []
    latest = features.sort_values(spec.timestamp).drop_duplicates(spec.entity_keys, keep="last")
    return [
        (
            entity_id(spec, row),
            pd.Timestamp(row[spec.timestamp]).date().isoformat(),
            json.dumps({k: _plain(v) for k, v in row.items()}),
        )
        for row in latest.to_dict("records")
    ]


def _plain(value: object) -> object:
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value
