"""dagster-mlflow's run-per-Dagster-run tracking, with the experiment created where we choose.

`dagster_mlflow.mlflow_tracking` calls `mlflow.set_experiment`, which would put artifacts under
./mlruns of whatever directory the process runs in. Creating the experiment first, with an
explicit artifact location, keeps all state under `.ml_platform/`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_mlflow.resources import CONFIG_SCHEMA, MlFlow
from mlflow.tracking import MlflowClient


@dg.resource(
    config_schema={**CONFIG_SCHEMA, "artifact_root": dg.Field(str, is_required=True)},
    description="MLflow run for this Dagster run (dagster-mlflow), tagged with the run id.",
)
def mlflow_tracking(context: dg.InitResourceContext) -> MlFlow:
    config = context.resource_config
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
