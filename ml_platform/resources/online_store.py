"""The online feature store: the latest feature row per entity, for real-time serving.

SQLite by default (one file under `.ml_platform/`); the same interface is what a Redis-backed
store implements in production. Rows are upserted only when newer, so a backfill of old
partitions never overwrites fresher features.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_platform.specs import PipelineSpec


class OnlineStore(dg.ConfigurableResource):
    """Latest feature row per entity in SQLite."""

    path: str

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS features (pipeline TEXT NOT NULL, entity TEXT NOT NULL,"
            " feature_day TEXT NOT NULL, row TEXT NOT NULL, PRIMARY KEY (pipeline, entity))"
        )
        return conn

    def write_latest(self, spec: PipelineSpec, features: pd.DataFrame) -> int:
        """Upsert each entity's newest row; returns how many entities were offered."""
        if features.empty:
            return 0
        latest = features.sort_values(spec.timestamp).drop_duplicates(spec.entity_keys, keep="last")
        records = [
            (
                spec.name,
                entity_id(spec, row),
                pd.Timestamp(row[spec.timestamp]).date().isoformat(),
                json.dumps({k: _plain(v) for k, v in row.items()}),
            )
            for row in latest.to_dict("records")
        ]
        with closing(self._connect()) as conn, conn:
            conn.executemany(
                "INSERT INTO features VALUES (?, ?, ?, ?) ON CONFLICT(pipeline, entity) DO UPDATE"
                " SET feature_day = excluded.feature_day, row = excluded.row"
                " WHERE excluded.feature_day >= features.feature_day",
                records,
            )
        return len(records)

    def read(self, spec: PipelineSpec, entities: list[dict]) -> dict[str, dict | None]:
        """Feature rows for the given entity key dicts; unknown entities map to None."""
        ids = [entity_id(spec, e) for e in entities]
        with closing(self._connect()) as conn:
            found = (
                dict(
                    conn.execute(
                        f"SELECT entity, row FROM features WHERE pipeline = ? AND entity IN "
                        f"({','.join('?' * len(ids))})",
                        [spec.name, *ids],
                    ).fetchall()
                )
                if ids
                else {}
            )
        return {i: json.loads(found[i]) if i in found else None for i in ids}


def entity_id(spec: PipelineSpec, row: dict) -> str:
    return "|".join(str(row[k]) for k in spec.entity_keys)


def _plain(value: object) -> object:
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value
