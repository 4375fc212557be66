"""The MLflow model registry, behind one resource with working embedded defaults.

Models are loaded only from this registry, by alias, and deserialised with skops against the
trusted-types list from *our* spec, never the list stored inside the artifact (which the artifact's
author controls).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import dagster as dg
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_platform.names import (
    CANARY,
    CANARY_WEIGHT_TAG,
    CHALLENGER,
    CHAMPION,
    FINGERPRINT_TAG,
    PREVIOUS,
)
from ml_platform.resources.model_loader import load_version, registry_client

__all__ = ["CANARY", "CANARY_WEIGHT_TAG", "CHALLENGER", "CHAMPION", "PREVIOUS", "ModelRegistry"]
REFERENCE_ARTIFACT = "drift_reference/reference.parquet"


class ModelRegistry(dg.ConfigurableResource):
    """MLflow tracking + registry (SQLite and local artifacts by default)."""

    tracking_uri: str
    artifact_root: str

    def client(self) -> MlflowClient:
        return registry_client(self.tracking_uri)

    def ensure_experiment(self, name: str) -> str:
        """Create the experiment with an artifact root we choose (MLflow's default is ./mlruns)."""
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # "" leaves the location to the tracking server (`mlflow-artifacts:/`, served by it).
        location = Path(self.artifact_root, name).resolve().as_uri() if self.artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            return client.get_experiment_by_name(name).experiment_id

    def ensure_model(self, name: str, description: str = "") -> None:
        client = self.client()
        try:
            client.get_registered_model(name)
        except MlflowException:
            # Another process may create it concurrently; the lookup below proves it exists.
            with contextlib.suppress(MlflowException):
                client.create_registered_model(name, description=description)
            client.get_registered_model(name)

    def find_version(self, name: str, fingerprint: str) -> ModelVersion | None:
        """The version already trained from exactly this data, code and spec, if any."""
        found = self.client().search_model_versions(
            f"name = '{name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
        )
        return min(found, key=lambda v: int(v.version)) if found else None

    def alias_version(self, name: str, alias: str) -> ModelVersion | None:
        try:
            return self.client().get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(name, alias, str(version))

    def tag_version(self, name: str, version: str, tags: dict[str, Any]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value)[:5000])

    def load_reference(self, name: str, version: ModelVersion) -> Any:
        """The sample of training features logged with a version, used as the drift reference."""
        import mlflow.artifacts
        import pandas as pd

        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path=REFERENCE_ARTIFACT,
                tracking_uri=self.tracking_uri,
            )
        except (MlflowException, OSError) as exc:
            raise LookupError(
                f"{name} v{version.version} has no drift reference ({REFERENCE_ARTIFACT}): {exc}"
            ) from exc
        return pd.read_parquet(local)

    def load_model(
        self, name: str, alias: str, trusted_types: list[str]
    ) -> tuple[Any, ModelVersion]:
        """Load the version behind `alias` with skops, trusting only `trusted_types`."""
        version = self.alias_version(name, alias)
        if version is None:
            raise LookupError(f"registered model {name!r} has no {alias!r} alias yet")
        return load_version(self.client(), name, version.version, trusted_types), version
