"""Serving a classifier: probability and class per entity, from the online store and champion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ml_platform.core import datagen_churn, training
from ml_platform.core.datagen import latest_landing_day
from ml_platform.specs import SPEC_DIR, load_spec
from ml_platform_tests.conftest import activated, make_platform_root, registry_for

pytestmark = pytest.mark.slow
PREDICT = "/v1/customer_churn/predict"


@pytest.fixture(scope="module")
def churn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ml_platform.demo import run_demo

    root = make_platform_root(tmp_path_factory.mktemp("churn_serving") / "project")
    spec = load_spec(SPEC_DIR / "customer_churn.yaml", root)
    with activated(root):
        config = datagen_churn.ChurnConfig(customers=200, days=120, seed=3)
        datagen_churn.write_landing_files(config, root / spec.landing.directory)
        assert run_demo(root, "customer_churn") == 0
    return root


@pytest.fixture(scope="module")
def client(churn_root: Path):
    from ml_platform.serving.app import create_app
    from ml_platform.settings import mlflow_uri, online_store_url

    spec = load_spec(SPEC_DIR / "customer_churn.yaml", churn_root)
    # Inside the project's environment: another test in this worker may have left a tracking
    # URI in the process environment, and `mlflow_uri` honours it.
    with activated(churn_root):
        uri, store = mlflow_uri(churn_root), online_store_url(churn_root)
        app = create_app(churn_root, [spec], uri, store, reload_seconds=60)
        with TestClient(app) as test_client:
            ready = test_client.get("/readyz")
            assert ready.status_code == 200, ready.text
            yield test_client


def _latest(root: Path) -> pd.DataFrame:
    spec = load_spec(SPEC_DIR / "customer_churn.yaml", root)
    last = latest_landing_day(root / spec.landing.directory)
    return pd.read_parquet(root / "data" / "customer_churn" / "features" / f"{last}.parquet")


def test_predict_returns_the_batch_probability_and_class(client, churn_root):
    spec = load_spec(SPEC_DIR / "customer_churn.yaml", churn_root)
    features = _latest(churn_root)
    ids = features["customer_id"].head(25).tolist()
    response = client.post(PREDICT, json={"entities": [{"customer_id": i} for i in ids]})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    with activated(churn_root):
        model, _ = registry_for(churn_root).load_model(
            "customer_churn", "champion", spec.model.skops_trusted_types
        )
    expected = training.predict(model, features.head(25), spec)
    for answer, probability in zip(answers, expected, strict=True):
        assert 0 <= answer["prediction"] <= 1
        assert answer["prediction"] == pytest.approx(probability, abs=1e-12)
        assert answer["class"] == int(probability >= spec.model.decision_threshold)
        assert answer["variant"] == "champion"


def test_a_category_never_seen_in_training_is_served(client, churn_root):
    """A new plan appears online before any retrain: scored, never a 4xx or 5xx."""
    import sqlite3

    store = churn_root / ".ml_platform" / "online_store.sqlite"
    with sqlite3.connect(store) as conn:
        entity, row = conn.execute(
            "SELECT entity, row FROM features WHERE pipeline = 'customer_churn' LIMIT 1"
        ).fetchone()
        values = json.loads(row)
        values["plan"], values["region"] = "enterprise", None
        conn.execute(
            "UPDATE features SET row = ? WHERE pipeline = 'customer_churn' AND entity = ?",
            (json.dumps(values), entity),
        )
    response = client.post(PREDICT, json={"entities": [{"customer_id": entity}]})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["predictions"][0]["prediction"] <= 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"entities": [{"customer_id": "C999999"}]}, 404),  # an unknown entity
        ({"entities": [{"store_id": "S0001"}]}, 422),  # another pipeline's key
        ({"entities": [{"customer_id": 5}]}, 422),  # wrong type
        ({"entities": []}, 422),
    ],
)
def test_bad_requests_get_a_clear_4xx(client, body, status):
    response = client.post(PREDICT, json=body)
    assert response.status_code == status
    assert response.json()["error"] and "Traceback" not in response.text
