"""Load a registered model version with skops, trusting only the types our spec lists.

No dagster here: the serving workers and the `ModelRegistry` resource share this one loader.
Models come only from our own registry (resolved through our own client), never from a URI a
caller passes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

# Registry conventions shared by the Dagster assets, the serving app and the canary sensor.
CHAMPION = "champion"
CHALLENGER = "challenger"
CANARY = "canary"
PREVIOUS = "previous"
CANARY_WEIGHT_TAG = "ml_platform.canary_weight"


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def load_version(client: MlflowClient, name: str, version: str, trusted_types: list[str]) -> Any:
    """The fitted model of `name` version `version`, or a clear error if it is not safe to load."""
    import mlflow.artifacts
    import skops.io

    # Resolve through our own client: a `models:/` URI would use MLflow's global registry URI.
    source = client.get_model_version_download_uri(name, str(version))
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri)
    )
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("sklearn", {})
    if flavor.get("serialization_format") != "skops":
        raise ValueError(f"{name} v{version} is not stored in skops format; refusing to load it")
    model_file = local / flavor.get("pickled_model", "model.skops")
    untrusted = [t for t in skops.io.get_untrusted_types(file=model_file) if t not in trusted_types]
    if untrusted:
        raise ValueError(
            f"{name} v{version} contains types not in the spec's skops_trusted_types: {untrusted}"
        )
    return skops.io.load(model_file, trusted=trusted_types)
