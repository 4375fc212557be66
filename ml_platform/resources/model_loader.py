"""Load a registered model version with skops, trusting only the types our spec lists.

No dagster here: the serving workers and the `ModelRegistry` resource share this one loader. It
sits in `resources` (the adapters to MLflow and stores) so the resource does not import upward.
Models come only from our own registry (resolved through our own client), never from a URI a
caller passes in.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient


def registry_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def load_version(client: MlflowClient, name: str, version: str, trusted_types: list[str]) -> Any:
    """The fitted model of `name` version `version`, or a clear error if it is not safe to load.

    A registered version's artifacts never change, so a process loads each version once (runs
    that predict and report drift with the same champion share it).
    """
    return _load_version(client.tracking_uri, name, str(version), tuple(trusted_types))


@functools.lru_cache(maxsize=4)
def _load_version(tracking_uri: str, name: str, version: str, trusted: tuple[str, ...]) -> Any:
    import mlflow.artifacts
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    client = registry_client(tracking_uri)
    # Resolve through our own client: a `models:/` URI would use MLflow's global registry URI.
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, tracking_uri=tracking_uri, dst_path=scratch
            )
        )
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("sklearn", {})
        if flavor.get("serialization_format") != "skops":
            raise ValueError(
                f"{name} v{version} is not stored in skops format; refusing to load it"
            )
        model_file = local / flavor.get("pickled_model", "model.skops")
        try:  # skops audits every type against `trusted` before it builds anything
            return skops.io.load(model_file, trusted=list(trusted))
        except UntrustedTypesFoundException as exc:
            raise ValueError(
                f"{name} v{version} contains types not in the spec's skops_trusted_types: "
                f"{exc.args[0] if exc.args else exc}"
            ) from None
