"""MLflow tracking and registry as an `mlflow server` on PostgreSQL, artifacts served by it."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from ml_platform.core import training
from ml_platform.production import _connect
from ml_platform.resources.model_loader import load_version
from ml_platform.resources.registry import CHAMPION
from ml_platform.runs import materialize
from ml_platform_tests.conftest import generate

pytestmark = pytest.mark.slow


def test_train_register_and_promote_through_the_server(
    isolated_env, spec, mlflow_server, monkeypatch, tmp_path
):
    root = isolated_env
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    generate(root, spec, stores=4, days=160, seed=3)

    assert materialize(root, spec, ["raw", "validated", "quarantine", "features"])
    assert materialize(root, spec, ["training_set", "challenger", "promotion"])

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    champion = client.get_model_version_by_alias(spec.name, CHAMPION)
    assert champion.version == "1"
    assert champion.tags["dagster_run_id"]
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # uploaded through the server
    assert run.data.metrics  # holdout metrics logged through the server
    assert not (root / ".ml_platform" / "mlartifacts").exists()  # nothing on the client's disk
    stored = list((tmp_path / "server_artifacts").rglob("*"))
    assert any(p.name.endswith(".skops") or p.name == "MLmodel" for p in stored)

    # A client elsewhere (another folder, no shared disk) loads the champion from the server.
    monkeypatch.chdir(tmp_path)
    model = load_version(client, spec.name, champion.version, training.trusted_types(spec))
    assert hasattr(model, "predict")

    # The registry lives in the server's PostgreSQL database.
    conn = _connect(mlflow_server.database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
                (spec.name, CHAMPION),
            )
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
