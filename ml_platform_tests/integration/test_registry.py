"""Registration goes to our registry, whatever MLflow's process-global registry URI says."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LinearRegression

from ml_platform.resources.registry import ModelRegistry


def registry_at(path: Path) -> ModelRegistry:
    return ModelRegistry(
        tracking_uri=f"sqlite:///{path / 'mlflow.db'}", artifact_root=str(path / "artifacts")
    )


def test_a_version_is_registered_in_our_registry_even_if_the_global_one_points_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ours, elsewhere = registry_at(tmp_path / "ours"), registry_at(tmp_path / "elsewhere")
    elsewhere.ensure_model("demo")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", elsewhere.tracking_uri)  # e.g. left by a notebook
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", None)
    ours.ensure_model("demo")
    experiment = ours.ensure_experiment("demo")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(ours.tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            model = LinearRegression().fit(np.arange(10.0).reshape(-1, 1), np.arange(10.0))
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops")
    finally:
        mlflow.set_tracking_uri(previous)

    assert ours.register_version("demo", info) == "1"
    assert mlflow.get_tracking_uri() == previous  # put back after the call
    assert ours.register_version("demo", info) == "2"  # each call is a new version, as in MLflow
    versions = ours.client().search_model_versions("name = 'demo'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert elsewhere.client().search_model_versions("name = 'demo'") == []
    with pytest.raises(MlflowException):
        ours.register_version("no_such_model", info)
