"""The serving app as a user meets it: real server, real registry, real online store."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from ml_platform.core.datagen import latest_landing_day
from ml_platform.resources.feature_store import RedisFeatureStore
from ml_platform.resources.online_store import OnlineStore
from ml_platform.resources.prediction_log import read_prediction_log
from ml_platform_tests.serving.conftest import all_entities

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
PREDICT = "/v1/sales_forecast/predict"


def _features(root: Path, spec, day) -> pd.DataFrame:
    return pd.read_parquet(root / "data" / spec.name / "features" / f"{day}.parquet")


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, pd.Timestamp):
        return a.date().isoformat() == b
    return a == b


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_online_rows_equal_offline_rows_for_every_entity_and_day(
    serving_root: Path, spec, tmp_path: Path, backend: str
) -> None:
    """Day by day, as the `features` asset writes them, the online row is the offline row."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'online.sqlite'}"
    else:
        url = "redis://127.0.0.1:6379/15"
        RedisFeatureStore(url).clear(spec.name)
    store = OnlineStore(url=url)
    last = latest_landing_day(serving_root / spec.landing.directory)
    checked = 0
    for offset in range(10, -1, -1):
        day = last - timedelta(days=offset)
        offline = _features(serving_root, spec, day)
        assert store.write_latest(spec, offline) == len(offline)
        online = store.read(spec, offline[spec.entity_keys].to_dict("records"))
        for row in offline.to_dict("records"):
            stored = online["|".join(str(row[k]) for k in spec.entity_keys)]
            mismatched = [c for c, v in row.items() if not _same(v, stored[c])]
            assert not mismatched, f"{day} {row[spec.entity_keys[0]]}: {mismatched}"
            checked += 1
    assert checked == 11 * 120
    # An older day never overwrites a newer one (a backfill after the fact).
    store.write_latest(spec, _features(serving_root, spec, last - timedelta(days=20)))
    first = offline[spec.entity_keys].head(1).to_dict("records")
    assert next(iter(store.read(spec, first).values()))[spec.timestamp] == last.isoformat()


def test_online_predictions_equal_batch_predictions(server: str, serving_root: Path, spec) -> None:
    """The same entities and day give identical numbers online and in the `predictions` asset."""
    last = latest_landing_day(serving_root / spec.landing.directory)
    batch = pd.read_parquet(serving_root / "data" / spec.name / "predictions" / f"{last}.parquet")
    entities = all_entities(serving_root, spec)
    response = httpx.post(server + PREDICT, json={"entities": entities}, timeout=30)
    assert response.status_code == 200, response.text
    online = pd.DataFrame(response.json()["predictions"])
    assert set(online["variant"]) == {"champion"}
    assert set(online["feature_day"]) == {last.isoformat()}
    merged = batch.merge(online, on=spec.entity_keys, suffixes=("_batch", "_online"))
    assert len(merged) == len(batch) == 120
    assert (merged["prediction_batch"] == merged["prediction_online"]).all()
    assert (merged["model_version_batch"] == merged["model_version_online"]).all()


HOSTILE = [
    ("malformed JSON", b'{"entities": [', 400, "malformed_json"),
    ("empty body", b"", 400, "malformed_json"),
    ("not an object", b"[1, 2]", 422, "invalid_request"),
    ("no entities", b"{}", 422, "invalid_request"),
    ("empty entities", b'{"entities": []}', 422, "invalid_request"),
    ("number key", b'{"entities": [{"store_id": 1, "product_id": "P01"}]}', 422, "invalid_request"),
    ("missing key", b'{"entities": [{"store_id": "S0001"}]}', 422, "invalid_request"),
    (
        "unknown field",
        b'{"entities": [{"store_id": "S0001", "product_id": "P01", "price": 1}]}',
        422,
        "invalid_request",
    ),
    (
        "unknown entity",
        b'{"entities": [{"store_id": "S9999", "product_id": "P01"}]}',
        404,
        "unknown_entity",
    ),
    ("huge body", b'{"entities": [' + b" " * 2_000_000 + b"]}", 413, "too_large"),
]


@pytest.mark.parametrize(("what", "body", "status", "error"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_clear_4xx(
    server: str, what: str, body: bytes, status: int, error: str
) -> None:
    response = httpx.post(
        server + PREDICT, content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == error and payload["detail"], payload
    if error == "unknown_entity":
        assert payload["entities"] == [{"store_id": "S9999", "product_id": "P01"}]
        assert "S9999" in payload["detail"]


def test_batch_limits_unknown_pipelines_and_methods(server: str, spec) -> None:
    limit = spec.deployment.max_batch_entities
    too_many = {"entities": [{"store_id": "S0001", "product_id": "P01"}] * (limit + 1)}
    response = httpx.post(server + PREDICT, json=too_many, timeout=30)
    assert response.status_code == 413 and str(limit) in response.json()["detail"]
    response = httpx.post(server + "/v1/nope/predict", json={"entities": []}, timeout=10)
    assert response.status_code == 404 and spec.name in response.json()["pipelines"]
    assert response.json()["pipelines"] == sorted(response.json()["pipelines"])
    assert httpx.get(server + PREDICT, timeout=10).status_code == 405
    assert httpx.get(server + "/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(server + "/readyz", timeout=10).status_code == 200


def test_every_prediction_is_logged_and_counted(server: str, serving_root: Path, spec) -> None:
    request_id = uuid.uuid4().hex
    entities = all_entities(serving_root, spec)[:3]
    response = httpx.post(
        server + PREDICT, json={"entities": entities}, headers={"x-request-id": request_id}
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    logged = read_prediction_log(
        serving_root / ".ml_platform" / "serving" / "predictions", spec.name
    )
    mine = logged[logged["request_id"] == request_id]
    assert len(mine) == 3
    assert set(mine.columns) >= {"variant", "model_version", "features_hash", "prediction"}
    answered = [p["prediction"] for p in response.json()["predictions"]]
    assert mine["prediction"].tolist() == answered
    metrics = httpx.get(server + "/metrics", timeout=10).text
    assert 'ml_platform_requests_total{pipeline="sales_forecast",variant="champion"' in metrics
    assert "ml_platform_request_latency_seconds_bucket" in metrics
    assert "ml_platform_client_errors_total" in metrics
