"""Online feature store backends: the latest feature row per entity, for real-time serving.

Plain Python (no dagster), so the batch asset and the serving app share one implementation. SQLite
is the embedded default; Redis backs it in production. Both keep the same contract:

- a row is stored as the JSON of the offline feature row, so online and batch features are the
  same values (floats round-trip exactly through JSON);
- an upsert only replaces an entity's row with one from the same or a newer feature day, so a
  backfill of old partitions never overwrites fresher features.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode, urlparse

import numpy as np
import orjson
import pandas as pd

from ml_platform.specs import PipelineSpec

# (entity id, feature day "YYYY-MM-DD", row JSON)
StoredRow = tuple[str, str, str]
REDIS_CHUNK = 2000
WRITE_CHUNK = 100_000  # rows encoded and written per transaction

_REDIS_UPSERT = """
local ids = {}
for i = 1, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
local current = redis.call('HMGET', KEYS[2], unpack(ids))
local days, rows, seen = {}, {}, {}
for j = 1, #ids do
  local i = 3 * j - 2
  local day = seen[ids[j]] or current[j]
  if (not day) or day <= ARGV[i + 1] then
    seen[ids[j]] = ARGV[i + 1]
    days[#days + 1] = ARGV[i]; days[#days + 1] = ARGV[i + 1]
    rows[#rows + 1] = ARGV[i]; rows[#rows + 1] = ARGV[i + 2]
  end
end
if #rows > 0 then
  redis.call('HSET', KEYS[2], unpack(days))
  redis.call('HSET', KEYS[1], unpack(rows))
end
return #rows / 2
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
                ((pipeline, *row) for row in rows),
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
    """`sqlite:////abs/path.sqlite` (embedded default) or `redis://host:port/db[?namespace=P]`
    (production; keys under `P`, default `ml_platform:online`)."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SqliteFeatureStore(Path(url.removeprefix("sqlite:///")), read_only=read_only)
    if scheme in {"redis", "rediss", "unix"}:
        return RedisFeatureStore(*_redis_namespace(url))
    raise ValueError(f"unsupported online store URL {url!r}: use sqlite:///PATH or redis://HOST")


def _redis_namespace(url: str) -> tuple[str, str]:
    """`redis://host/db?namespace=team_a` keeps one deployment's (or test's) keys apart from
    another's on a shared server; redis-py does not know the option, so it is taken out."""
    from urllib.parse import parse_qsl

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
    """Each entity's newest feature row, encoded for the online store, sorted by entity id."""
    return [row for chunk in iter_latest_rows(spec, features) for row in chunk]


def iter_latest_rows(
    spec: PipelineSpec, features: pd.DataFrame, chunk_rows: int = WRITE_CHUNK
) -> Iterator[list[StoredRow]]:
    """Each entity's newest feature row, encoded, in chunks of `chunk_rows` sorted by entity id.

    Chunks keep memory flat (10M encoded rows as Python tuples were about 6 GB), and entity
    order makes SQLite append to its primary-key B-tree instead of seeking across it. Values are
    encoded column by column (`tolist`, vectorised dates) and each row with orjson: the
    per-row `to_dict` + `json.dumps` of before was the bulk of a 10M-entity refresh. NaN and
    NaT are stored as null and floats keep their shortest round-trip form, as before.
    """
    if features.empty:
        return
    # Positions, not copies: each entity's newest row, then those rows in entity order.
    newest_first = np.argsort(pd.to_datetime(features[spec.timestamp]).to_numpy(), kind="stable")
    keys = features[spec.entity_keys].iloc[newest_first]
    positions = newest_first[~keys.duplicated(keep="last").to_numpy()]
    del keys, newest_first
    ids = _entity_ids(spec, features, positions)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    positions, ids = positions[order], [ids[i] for i in order]
    columns = [str(c) for c in features.columns]
    for start in range(0, len(positions), chunk_rows):
        part = features.iloc[positions[start : start + chunk_rows]]
        days = _iso_days(part[spec.timestamp])
        values = [_plain_column(part[c]) for c in part.columns]
        encoded = [
            orjson.dumps(dict(zip(columns, row, strict=True)), option=orjson.OPT_SERIALIZE_NUMPY)
            for row in zip(*values, strict=True)
        ]
        yield [
            (entity, day, text.decode())
            for entity, day, text in zip(ids[start : start + len(part)], days, encoded, strict=True)
        ]


def _entity_ids(spec: PipelineSpec, frame: pd.DataFrame, positions: np.ndarray) -> list[str]:
    """`entity_id` of the rows at `positions`, column by column (`tolist` gives the same Python
    values as a row dict)."""
    parts = [[str(v) for v in frame[k].iloc[positions].tolist()] for k in spec.entity_keys]
    return parts[0] if len(parts) == 1 else ["|".join(t) for t in zip(*parts, strict=True)]


def _iso_days(column: pd.Series) -> list[str | None]:
    days = pd.to_datetime(column).to_numpy().astype("datetime64[D]")
    text = np.datetime_as_string(days, unit="D").astype(object)
    text[np.isnat(days)] = None
    return text.tolist()


def _plain_column(column: pd.Series) -> list:
    """A column as JSON-ready Python values: dates as YYYY-MM-DD, missing values as None."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return _iso_days(column)
    if isinstance(column.dtype, np.dtype) and column.dtype.kind in "fiub":
        return column.tolist()  # NaN stays a float: orjson writes it as null
    # object and extension dtypes (Int64, boolean, string): pd.NA and NaN become None
    values = column.astype(object)
    values = values.where(values.notna(), None).tolist()
    return [v.date().isoformat() if isinstance(v, pd.Timestamp) else v for v in values]
