"""Build the `Definitions` of pipeline specs plus shared resources (nothing built at import).

Building it reads the spec files and nothing else: no MLflow, DVC or network access at import. A
broken spec is logged and left out, so one team's mistake never stops the others; in the Dagster
UI each pipeline is its own code location (`ml_platform.locations`), where a broken spec shows as
that location's load error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

# Import order, for speed: skops (model loading) names each of scipy's ~230 ufuncs at import by
# scanning sys.modules, in import order, until it reaches scipy. scikit-learn (and with it scipy)
# is imported anyway; importing it here, before MLflow's ~1,500 modules, makes that scan about
# 0.7 s shorter in every run that loads a model (bench/README.md).
import sklearn  # noqa: F401  isort: skip

from ml_platform.assets.factory import build_pipeline_assets
from ml_platform.automation.canary_sensor import build_canary_sensor
from ml_platform.automation.jobs import build_jobs
from ml_platform.automation.ledger import build_dvc_recorder
from ml_platform.automation.sensors import build_automation, build_failure_sensor
from ml_platform.automation.zombies import DEAD_RUN_SENSOR_SUFFIX, build_dead_run_sensor
from ml_platform.instance import tune_embedded_sqlite
from ml_platform.names import FAILURE_SENSOR_NAME, tracking_key
from ml_platform.resources.io_manager import ParquetIOManager
from ml_platform.resources.online_store import OnlineStore, online_store_url_source
from ml_platform.resources.platform import PlatformPaths
from ml_platform.resources.registry import ModelRegistry
from ml_platform.resources.tracking import (
    mlflow_tracking,
    tracking_uri_config,
    tracking_uri_source,
)
from ml_platform.settings import (
    CELERY_BROKER_ENV,
    CELERY_RELIABILITY,
    DEFAULT_CELERY_BROKER,
    celery_broker_set,
    celery_queue,
    data_root,
    default_root,
    executor_name,
    mlflow_artifact_root,
    mlflow_uri,
    spec_dir_from_env,
)
from ml_platform.specs import PipelineSpec, load_specs_isolated

__all__ = ["build_definitions", "mlflow_uri", "spec_dir_from_env"]
log = logging.getLogger("ml_platform")


def build_definitions(
    root: Path | None = None,
    spec_dir: Path | None = None,
    specs: list[PipelineSpec] | None = None,
    location: str | None = None,
) -> dg.Definitions:
    """Definitions for `specs`, or for every valid spec in `spec_dir` (broken ones are logged);
    `location` names the code location's own sensors (None: the all-pipelines location)."""
    root = (root or default_root()).resolve()
    tune_embedded_sqlite()
    if specs is None:
        specs, errors = load_specs_isolated(spec_dir or spec_dir_from_env(), root)
        for error in errors.values():
            log.error("pipeline left out: %s", error)
    artifact_root = mlflow_artifact_root(root)
    # URLs that may hold passwords enter the definitions as env var names (`dg.EnvVar`).
    resources: dict[str, object] = {
        "paths": PlatformPaths(root=str(root)),
        "parquet_io": ParquetIOManager(base_dir=data_root(root)),
        "registry": ModelRegistry(
            tracking_uri=tracking_uri_source(root), artifact_root=artifact_root
        ),
        "online_store": OnlineStore(url=online_store_url_source(root)),
    }
    assets, jobs, sensors, schedules = [], [], [], []
    for spec in specs:
        assets.extend(build_pipeline_assets(spec))
        jobs.extend(build_jobs(spec))
        spec_sensors, spec_schedules = build_automation(spec)
        sensors.extend([*spec_sensors, build_canary_sensor(spec)])
        schedules.extend(spec_schedules)
        resources[tracking_key(spec)] = mlflow_tracking.configured(
            {
                "experiment_name": spec.name,
                "mlflow_tracking_uri": tracking_uri_config(root),
                "artifact_root": artifact_root,
                "extra_tags": {"pipeline": spec.name},
            }
        )
    pipeline_of_job = {job.name: spec.name for spec in specs for job in build_jobs(spec)}
    # Location-wide sensors carry the location's name: the pipeline's, in its own location.
    prefix = f"{location}_" if location else ""
    sensors.append(build_dvc_recorder(pipeline_of_job, name=f"{prefix}dvc_recorder"))
    fastest = min((s.automation.landing_sensor_interval_seconds for s in specs), default=30)
    failure = f"{location}_run_failure_alerts" if location else FAILURE_SENSOR_NAME
    sensors.append(build_failure_sensor(minimum_interval_seconds=fastest, name=failure))
    dead_runs = f"{prefix or 'ml_platform_'}{DEAD_RUN_SENSOR_SUFFIX}"
    sensors.append(build_dead_run_sensor(dead_runs, location, pipeline_of_job))
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
        executor=select_executor(),
    )


def select_executor() -> dg.ExecutorDefinition:
    """The executor named by `ML_PLATFORM_EXECUTOR` (settings.py): in-process by default.

    Celery's broker URL is read by Dagster from `ML_PLATFORM_CELERY_BROKER` when the run starts
    (`dg.EnvVar`-style config), so credentials never enter definitions or run config.
    """
    name = executor_name()
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor

        broker = {"env": CELERY_BROKER_ENV} if celery_broker_set() else DEFAULT_CELERY_BROKER
        return celery_executor.configured(
            {
                "broker": broker,
                "backend": "rpc://",
                "config_source": {"task_default_queue": celery_queue(), **CELERY_RELIABILITY},
            },
            name="celery",
        )
    return dg.in_process_executor
