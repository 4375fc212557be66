"""The online store's row encoding: chunked and column-wise, the same rows as one row at a time."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from ml_platform.resources.feature_store import (
    RedisFeatureStore,
    SqliteFeatureStore,
    StoreUnavailableError,
    entity_id,
    iter_latest_rows,
    latest_rows,
    open_feature_store,
)


def _row_by_row(spec, features: pd.DataFrame) -> dict[str, tuple[str, dict]]:
    """The definition: each entity's newest row, every value as plain JSON (NaN/NaT as null)."""
    latest = features.sort_values(spec.timestamp).drop_duplicates(spec.entity_keys, keep="last")
    out = {}
    for row in latest.to_dict("records"):
        plain = {}
        for key, value in row.items():
            if isinstance(value, pd.Timestamp):
                value = value.date().isoformat()
            elif pd.isna(value):
                value = None
            plain[key] = value.item() if hasattr(value, "item") else value
        out[entity_id(spec, row)] = (pd.Timestamp(row[spec.timestamp]).date().isoformat(), plain)
    return out


def _features(spec, n_entities: int = 37, days: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for d in range(days):
        for e in range(n_entities):
            rows.append(
                {
                    "store_id": f"S{e % 13:04d}",
                    "product_id": f"P{e // 13:02d}",
                    spec.timestamp: pd.Timestamp("2026-01-01") + pd.Timedelta(days=d),
                    "price": float(rng.normal()) if e % 5 else float("nan"),
                    "units": int(rng.integers(0, 100)),
                    "promo": bool(e % 2),
                    "label": None if e % 7 == 0 else f"x{e}",
                }
            )
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # unsorted, as a range can be
    # nullable extension dtypes, as validated frames have them (pd.NA is not JSON)
    frame["count"] = pd.array([None if i % 4 == 0 else i for i in range(len(frame))], "Int64")
    frame["flag"] = pd.array(
        [None if i % 3 == 0 else i % 2 == 0 for i in range(len(frame))], "boolean"
    )
    frame["name"] = pd.array([None if i % 5 == 0 else f"n{i}" for i in range(len(frame))], "string")
    return frame.drop(index=frame.index[::9])  # some entities miss some days


def test_chunked_rows_equal_the_row_by_row_definition(spec) -> None:
    features = _features(spec)
    expected = _row_by_row(spec, features)
    chunks = list(iter_latest_rows(spec, features, chunk_rows=10))
    rows = [row for chunk in chunks for row in chunk]
    assert len(chunks) > 1 and all(len(c) <= 10 for c in chunks)
    assert [r[0] for r in rows] == sorted(expected)  # entity order: B-tree appends
    for entity, day, text in rows:
        assert (day, json.loads(text)) == expected[entity]
    assert rows == latest_rows(spec, features)


def test_a_refresh_replaces_older_rows_and_keeps_newer_ones(spec, tmp_path) -> None:
    features = _features(spec)
    store = SqliteFeatureStore(tmp_path / "online.sqlite")
    try:
        for chunk in iter_latest_rows(spec, features, chunk_rows=7):
            store.upsert("p", chunk)
        older = features.assign(**{spec.timestamp: pd.Timestamp("2025-12-01"), "units": -1})
        for chunk in iter_latest_rows(spec, older, chunk_rows=7):
            store.upsert("p", chunk)
        ids = sorted(_row_by_row(spec, features))
        stored = [json.loads(v) for v in store.get("p", ids)]
        assert all(row["units"] >= 0 for row in stored)  # the backfill of older days lost
        newer = features.assign(**{spec.timestamp: pd.Timestamp("2026-02-01"), "units": -2})
        store.upsert("p", latest_rows(spec, newer))
        assert {json.loads(v)["units"] for v in store.get("p", ids)} == {-2}
    finally:
        store.close()


def test_redis_script_keeps_the_newest_row_within_and_across_chunks(spec) -> None:
    """One script call per chunk: rows for one entity inside a chunk still resolve newest-wins."""
    redis = pytest.importorskip("redis")
    url = f"redis://127.0.0.1:6379/0?namespace=test_online_rows_{uuid.uuid4().hex}"
    store = open_feature_store(url)
    try:
        store.probe()
    except StoreUnavailableError:
        store.close()
        pytest.skip("no Redis on 127.0.0.1:6379")
    try:
        assert isinstance(store, RedisFeatureStore) and store.namespace.startswith("test_online")
        store.upsert(
            "p", [("a", "2026-01-02", "new"), ("a", "2026-01-01", "old"), ("b", "2026-01-01", "b1")]
        )
        store.upsert(
            "p",
            [("b", "2026-01-03", "b3"), ("b", "2026-01-02", "b2"), ("a", "2025-12-31", "older")],
        )
        assert store.get("p", ["a", "b", "c"]) == ["new", "b3", None]
        rows = latest_rows(spec, _features(spec))
        store.upsert("q", rows)
        assert store.get("q", [r[0] for r in rows]) == [r[2] for r in rows]
    except redis.RedisError as exc:
        pytest.skip(f"Redis unavailable: {exc}")
    finally:
        store.clear("p")
        store.clear("q")
        store.close()
