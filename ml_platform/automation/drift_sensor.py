"""The drift sensor: a drifting `drift_report` requests one retraining run, at most once per
cooldown.

Exactly-once, for the same reasons as the landing sensor (`landing_sensor.py`), each surviving a
SIGKILL of the daemon:

- The run key is the drift report's event storage id, so Dagster never launches a second
  retraining run for the same report.
- The cursor is the newest report storage id seen. Dagster stores it with the tick's run requests
  before it launches any run, so a tick re-evaluated after a kill asks for the same run with the
  same key.
- The cooldown's clock is the newest drift-triggered training run in the instance, not the cursor,
  so it holds across cursor resets and sensor restarts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import dagster as dg

from ml_platform.names import (
    DRIFT_PARTITION_TAG,
    DRIFT_REPORT_TAG,
    DRIFT_SHARE_TAG,
    PIPELINE_TAG,
    TRIGGER_TAG,
    drift_sensor_name,
    training_job_name,
)
from ml_platform.resources.keys import asset_key
from ml_platform.specs import PipelineSpec

MAX_DRIFT_EVENTS_PER_TICK = 1000


def drift_report_key(spec: PipelineSpec) -> dg.AssetKey:
    return asset_key(spec, "drift_report")


def is_drift(metadata: Mapping[str, dg.MetadataValue]) -> bool:
    """The report says dataset drift or concept drift."""
    return any(
        bool(getattr(metadata.get(key), "value", False))
        for key in ("dataset_drift", "concept_drift")
    )


def last_drift_retrain_time(instance: dg.DagsterInstance, spec: PipelineSpec) -> float | None:
    """When the newest drift-triggered training run was created: the cooldown's clock.

    Read from the instance, not the cursor, so it holds across cursor resets and sensor restarts.
    """
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=training_job_name(spec), tags={TRIGGER_TAG: "drift"}),
        limit=1,
    )
    return records[0].create_timestamp.timestamp() if records else None


def evaluate_drift(context: dg.SensorEvaluationContext, spec: PipelineSpec) -> dg.SensorResult:
    """Read drift reports after the cursor (a storage id) and request at most one retrain.

    The first tick only notes where the event log is: turning the sensor on (or resetting it) must
    not retrain on old reports. Several drifting reports in one tick (a backfill) retrain once,
    keyed on the newest of them.
    """
    instance, key = context.instance, drift_report_key(spec)
    if context.cursor is None:
        latest = instance.fetch_materializations(key, limit=1).records
        start = str(latest[0].storage_id if latest else 0)
        return dg.SensorResult(cursor=start, skip_reason=f"started after drift report {start}")
    records = list(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=int(context.cursor)),
            limit=MAX_DRIFT_EVENTS_PER_TICK,
            ascending=True,
        ).records
    )
    if not records:
        return dg.SensorResult(cursor=context.cursor, skip_reason="no new drift report")
    cursor = str(max(r.storage_id for r in records))
    drifting = [r for r in records if is_drift(r.asset_materialization.metadata)]
    if not drifting:
        return dg.SensorResult(cursor=cursor, skip_reason=f"{len(records)} report(s), no drift")
    report = max(drifting, key=lambda r: r.storage_id)
    last = last_drift_retrain_time(instance, spec)
    cooldown_seconds = spec.drift.cooldown_hours * 3600
    if last is not None and time.time() - last < cooldown_seconds:
        remaining = (cooldown_seconds - (time.time() - last)) / 3600
        message = (
            f"drift in report {report.storage_id} ignored: cooldown of "
            f"{spec.drift.cooldown_hours} h has {remaining:.1f} h left"
        )
        context.log.info(message)
        return dg.SensorResult(cursor=cursor, skip_reason=message)
    metadata = report.asset_materialization.metadata
    share = getattr(metadata.get("drift_share"), "value", None)
    tags = {
        TRIGGER_TAG: "drift",
        PIPELINE_TAG: spec.name,
        DRIFT_REPORT_TAG: str(report.storage_id),
        DRIFT_PARTITION_TAG: str(report.asset_materialization.partition),
    }
    if share is not None:
        tags[DRIFT_SHARE_TAG] = f"{float(share):.3f}"
    context.log.info(f"drift in report {report.storage_id}: requesting a retraining run")
    request = dg.RunRequest(run_key=f"drift_report:{report.storage_id}", tags=tags)
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def build_drift_sensor(spec: PipelineSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=drift_sensor_name(spec),
        job_name=training_job_name(spec),
        minimum_interval_seconds=spec.automation.drift_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Retrain {spec.name} when a drift_report finds dataset or concept drift; "
            f"once per report, at most once per {spec.drift.cooldown_hours} h."
        ),
    )
    def drift_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return evaluate_drift(context, spec)

    return drift_sensor
