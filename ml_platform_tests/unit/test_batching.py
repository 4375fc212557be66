"""Micro-batching and canary fallback in the serving app's batch predictor (no HTTP)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor

from ml_platform.resources.feature_store import SqliteFeatureStore
from ml_platform.resources.prediction_log import PredictionLog, read_prediction_log
from ml_platform.serving.app import ServedPipeline
from ml_platform.serving.batching import BatchPredictor, PredictJob, UnknownEntitiesError
from ml_platform.serving.deployment import LoadedModel, ModelSlots, Snapshot
from ml_platform.serving.metrics import ServingMetrics
from ml_platform.serving.routing import is_canary


class RaisesOnPromo:
    """A deliberately broken canary: fails whenever a promo row is in the batch."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if (frame["promo"] == 1).any():
            raise ValueError("boom")
        return np.full(len(frame), 999.0)


def _champion(spec, value: float) -> DummyRegressor:
    frame = pd.DataFrame(np.zeros((2, len(spec.feature_columns))), columns=spec.feature_columns)
    return DummyRegressor(strategy="constant", constant=value).fit(frame, [value, value])


@pytest.fixture
def served(spec, tmp_path: Path):
    store = SqliteFeatureStore(tmp_path / "online.sqlite")
    rows = []
    for i in range(200):
        row = dict.fromkeys(spec.feature_columns, 1.0) | {"promo": i % 2, "date": "2024-03-01"}
        row |= {"store_id": f"S{i:04d}", "product_id": "P01"}
        rows.append((f"S{i:04d}|P01", "2024-03-01", json.dumps(row)))
    store.upsert(spec.name, rows)
    metrics = ServingMetrics()
    predictor = BatchPredictor(spec, store, metrics, PredictionLog(tmp_path / "log"))
    pipeline = ServedPipeline(spec, ModelSlots(spec, client=None), predictor)
    pipeline.slots.snapshot = Snapshot(
        champion=LoadedModel(1, _champion(spec, 10.0)),
        canary=LoadedModel(2, RaisesOnPromo()),
        canary_weight=50,
        affinity="entity",  # per entity, so one request holds both variants
    )
    return pipeline, metrics, tmp_path


def _submit_all(pipeline: ServedPipeline, jobs: list[PredictJob]) -> list:
    async def go():
        return await asyncio.gather(*(pipeline.submit(j) for j in jobs), return_exceptions=True)

    return asyncio.run(go())


def test_concurrent_requests_share_one_batch_and_each_gets_its_answer(served) -> None:
    pipeline, _, _ = served
    flushes = []
    original = pipeline.predictor.run
    pipeline.predictor.run = lambda snap, jobs: (flushes.append(len(jobs)), original(snap, jobs))
    jobs = [
        PredictJob([{"store_id": f"S{i:04d}", "product_id": "P01"}], f"r{i}") for i in range(50)
    ]
    jobs.append(PredictJob([{"store_id": "S9999", "product_id": "P01"}], "unknown"))
    results = _submit_all(pipeline, jobs)
    assert flushes == [51]
    assert isinstance(results[-1], UnknownEntitiesError) and "S9999" in str(results[-1])
    for i, answer in enumerate(results[:-1]):
        assert answer[0]["store_id"] == f"S{i:04d}" and answer[0]["feature_day"] == "2024-03-01"
        assert answer[0]["prediction_for"] == "2024-03-02"


def test_a_failing_canary_falls_back_to_the_champion_and_counts_errors(served) -> None:
    pipeline, metrics, tmp_path = served
    entities = [{"store_id": f"S{i:04d}", "product_id": "P01"} for i in range(200)]
    on_canary = [e for e in entities if is_canary(f"{e['store_id']}|P01", 50)]
    assert on_canary
    (answer,) = _submit_all(pipeline, [PredictJob(entities, "all")])
    assert {a["variant"] for a in answer} == {"champion"}
    assert {a["prediction"] for a in answer} == {10.0}
    text = metrics.exposition()[0].decode()
    errors = 'ml_platform_request_errors_total{pipeline="sales_forecast",variant="canary",'
    assert errors + 'version="2"} 1.0' in text
    logged = read_prediction_log(tmp_path / "log", "sales_forecast")
    assert len(logged) == 200 and set(logged["variant"]) == {"champion"}


def test_a_healthy_canary_serves_its_share(served, spec) -> None:
    pipeline, metrics, _ = served
    entities = [{"store_id": f"S{i:04d}", "product_id": "P01"} for i in range(0, 200, 2)]  # promo 0
    (answer,) = _submit_all(pipeline, [PredictJob(entities, "no-promo")])
    canary = [a for a in answer if a["variant"] == "canary"]
    assert canary and all(a["prediction"] == 999.0 and a["model_version"] == 2 for a in canary)
    shadow = (
        'ml_platform_prediction_value_count{pipeline="sales_forecast",variant="shadow",version="1"}'
    )
    assert f"{shadow} {float(len(canary))}" in metrics.exposition()[0].decode()


def test_no_champion_means_not_ready(served) -> None:
    pipeline, _, _ = served
    pipeline.slots.snapshot = Snapshot()
    (result,) = _submit_all(
        pipeline, [PredictJob([{"store_id": "S0001", "product_id": "P01"}], "x")]
    )
    assert "no champion" in str(result)


def test_models_fitted_on_other_columns_are_refused(spec) -> None:
    from ml_platform.serving.deployment import fitted_on

    model = _champion(spec, 1.0)
    assert fitted_on(model, spec.feature_columns)
    with pytest.raises(ValueError, match="fitted on"):
        fitted_on(model, list(reversed(spec.feature_columns)))
    assert not fitted_on(RaisesOnPromo(), spec.feature_columns)
