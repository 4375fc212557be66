"""dagster-mlflow's run-per-Dagster-run tracking, with the experiment created where we choose.

`dagster_mlflow.mlflow_tracking` calls `mlflow.set_experiment`, which would put artifacts under
./mlruns of whatever directory the process runs in. Creating the experiment first, with an
explicit artifact location, keeps all state under `.ml_platform/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_mlflow.resources import CONFIG_SCHEMA, MlFlow
from mlflow.tracking import MlflowClient

from ml_platform.core.secrets import errors_redacted

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def tracking_uri_source(root: Path) -> str | dg.EnvVar:
    """The tracking URI as resource config: the env var's *name* when it is set, so a URL with
    a password is read when the run starts and never stored in run snapshots (`runs.db`)."""
    from ml_platform.settings import mlflow_uri

    return dg.EnvVar(TRACKING_URI_ENV) if os.environ.get(TRACKING_URI_ENV) else mlflow_uri(root)


def tracking_uri_config(root: Path) -> str | dict[str, str]:
    """The same for an old-style (`config_schema`) resource: `{"env": NAME}` is a StringSource."""
    source = tracking_uri_source(root)
    return {"env": source.env_var_name} if isinstance(source, dg.EnvVar) else source


@dg.resource(
    config_schema={**CONFIG_SCHEMA, "artifact_root": dg.Field(str, is_required=True)},
    description="MLflow run for this Dagster run (dagster-mlflow), tagged with the run id.",
)
def mlflow_tracking(context: dg.InitResourceContext) -> MlFlow:
    config = context.resource_config
    with errors_redacted():  # a driver error may quote the URL, password included
        client = MlflowClient(tracking_uri=config["mlflow_tracking_uri"])
        name = config["experiment_name"]
        if client.get_experiment_by_name(name) is None:
            root = config["artifact_root"]  # "" leaves it to the tracking server (artifacts served)
            location = Path(root, name).resolve().as_uri() if root else None
            try:
                client.create_experiment(name, artifact_location=location)
            except Exception:
                context.log.info(f"experiment {name} was created concurrently")
        return MlFlow(context)
