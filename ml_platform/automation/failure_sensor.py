"""The run-failure sensor: every failed run of the code location becomes exactly one alert.

The alert names the failing steps' assets and their own messages (a contract violation names the
broken rule). Exactly once: `append_alert` skips a run id already in the sink, under the sink's
lock, so an event re-delivered after a SIGKILL of the daemon (alert written, cursor not yet saved)
writes nothing.
"""

from __future__ import annotations

import time

import dagster as dg

from ml_platform.automation.alerts import (
    Alert,
    StepFailure,
    deliver_alert,
    error_text,
    run_failure_alert,
)
from ml_platform.names import FAILURE_SENSOR_NAME
from ml_platform.resources.platform import default_root
from ml_platform.settings import ALERT_WEBHOOK_ENV


def _step_asset_keys(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, list[str]]:
    """Asset keys computed by each step of the run, from its stored execution plan.

    A checked asset comes first: when `validated` and `quarantine` share a step, the contract
    check is on `validated`, which is the asset a contract alert is about.
    """
    if not run.execution_plan_snapshot_id:
        return {}
    snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    keys: dict[str, list[str]] = {}
    for step in snapshot.steps:
        assets, checked = [], set()
        for output in step.outputs:
            props = output.properties
            if props is None:
                continue
            if props.asset_check_key is not None:
                checked.add(props.asset_check_key.asset_key.to_user_string())
            elif props.asset_key is not None:
                assets.append(props.asset_key.to_user_string())
        if assets:
            keys[step.key] = sorted(assets, key=lambda key: key not in checked)
    return keys


def _failure_message(event: dg.DagsterEvent) -> str:
    """A `dg.Failure`'s own description (it names the broken rule), else the error's text."""
    data = event.step_failure_data
    if data is None:
        return event.message or ""
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    return error_text(data.error.message, data.error.cls_name) if data.error else ""


def alert_for_failed_run(context: dg.RunFailureSensorContext) -> Alert:
    run = context.dagster_run
    try:
        assets_by_step = _step_asset_keys(context.instance, run)
    except Exception as exc:  # an alert without asset names beats no alert
        context.log.warning(f"cannot read the execution plan of run {run.run_id}: {exc}")
        assets_by_step = {}
    failures = [
        StepFailure(
            step_key=event.step_key or "run",
            message=_failure_message(event),
            asset_keys=tuple(assets_by_step.get(event.step_key or "", [])),
        )
        for event in context.get_step_failure_events()
    ]
    return run_failure_alert(
        job_name=run.job_name,
        run_id=run.run_id,
        step_failures=failures,
        run_failure_message=context.failure_event.message,
        timestamp=time.time(),
    )


def build_failure_sensor(
    minimum_interval_seconds: int = 30, name: str = FAILURE_SENSOR_NAME
) -> dg.SensorDefinition:
    """One sensor for the code location: every failed run becomes exactly one alert line.

    It watches every run of its location, including the UI's ad-hoc asset runs; in a
    per-pipeline location it is named after the pipeline.

    The project root is resolved when the sensor runs, never at import, so one code location
    serves whichever root `ML_PLATFORM_ROOT` (or the working directory) names.
    """

    @dg.run_failure_sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Append a JSON alert to .ml_platform/alerts.jsonl for every failed run "
            f"(and POST it to ${ALERT_WEBHOOK_ENV} when set)."
        ),
    )
    def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
        alert = alert_for_failed_run(context)
        if deliver_alert(alert, default_root(), context.log):
            context.log.info(f"alert recorded for failed run {alert.run_id}: {alert.reason[:200]}")

    return run_failure_alerts
