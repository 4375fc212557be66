"""Every name the platform gives things: asset stages and keys, jobs, sensors, schedules, run and
model tags, registry aliases.

One place, so a sensor, a job, the demo and the CLI cannot spell the same thing two ways. Plain
strings, no dagster: the serving workers import the alias names too. The Dagster objects built
from these names (asset keys, the partitions definition) are in `ml_platform.resources.keys`.
"""

from __future__ import annotations

from ml_platform.specs import PipelineSpec

# Asset stages of every pipeline, in graph order; an asset's key is [pipeline, stage].
INGEST_STAGES = ("raw", "validated", "quarantine", "features", "predictions", "drift_report")
TRAINING_STAGES = ("training_set", "challenger", "promotion")

# Registry aliases (MLflow model aliases) and model-version tags.
CHAMPION = "champion"
CHALLENGER = "challenger"
CANARY = "canary"
PREVIOUS = "previous"
CANARY_WEIGHT_TAG = "ml_platform.canary_weight"
FINGERPRINT_TAG = "ml_platform.fingerprint"
HOLDOUT_LOSS_TAG = "holdout_loss"  # the per-row loss concept drift compares against

# Run tags: ours, and Dagster's own for partitions.
TRIGGER_TAG = "ml_platform/trigger"
PIPELINE_TAG = "ml_platform/pipeline"
LANDING_MD5_TAG = "ml_platform/landing_md5"
LANDING_COUNT_TAG = "ml_platform/landing_files"
DRIFT_REPORT_TAG = "ml_platform/drift_report_storage_id"
DRIFT_PARTITION_TAG = "ml_platform/drift_report_partition"
DRIFT_SHARE_TAG = "ml_platform/drift_share"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

FAILURE_SENSOR_NAME = "ml_platform_run_failure_alerts"
JOB_SUFFIXES = ("_ingest", "_training")  # what `ingest_job_name` and `training_job_name` append


def ingest_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}{JOB_SUFFIXES[0]}"


def training_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}{JOB_SUFFIXES[1]}"


def retrain_schedule_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_retrain_schedule"


def landing_sensor_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_landing_sensor"


def drift_sensor_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_drift_sensor"


def tracking_key(spec: PipelineSpec) -> str:
    """The resource key of a pipeline's MLflow tracking resource."""
    return f"mlflow_{spec.name}"
