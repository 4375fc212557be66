"""The `<pipeline>_canary` sensor: one Flagger-style analysis of a canary release per interval.

The decision logic is `ml_platform.release` (plain Python); this file only gives it a schedule,
a cursor, the labels and predictions that have arrived, and an alert sink. Whatever an analysis
did is reported twice: as the tick's text, and as an observation of the pipeline's `promotion`
asset whose metadata (version, weight, each check's verdict) the asset page shows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pandas as pd

from ml_platform.automation.alerts import Alert, deliver_alert, truncate
from ml_platform.core.features import encode_target
from ml_platform.core.json_lines import iso_time
from ml_platform.core.storage import read_frame
from ml_platform.release.analysis import CanaryCursor, analyse, scrape
from ml_platform.resources.io_manager import ParquetIOManager
from ml_platform.resources.keys import asset_key
from ml_platform.resources.model_loader import registry_client
from ml_platform.resources.prediction_log import read_prediction_log
from ml_platform.settings import data_root, default_root, mlflow_uri, serving_url
from ml_platform.specs import PipelineSpec

log = logging.getLogger("ml_platform.canary")


def validated_labels(root: Path, spec: PipelineSpec):
    """Reads the target of the given days from the `validated` partitions that exist."""
    storage = ParquetIOManager(base_dir=data_root(Path(root)))
    key = asset_key(spec, "validated")

    def load(days: list[str]) -> pd.DataFrame:
        paths = [storage.path_for(key, d) for d in days]
        frames = [read_frame(p) for p in paths if p.exists()]
        if not frames:
            return pd.DataFrame()
        labels = encode_target(pd.concat(frames, ignore_index=True), spec)
        return labels[[*spec.entity_keys, spec.timestamp, spec.target]].rename(
            columns={spec.timestamp: "date"}
        )

    return load


def logged_predictions(root: Path, spec: PipelineSpec):
    """The serving app's prediction log of this pipeline since an ISO time."""
    folder = Path(root) / ".ml_platform" / "serving" / "predictions"
    return lambda since: read_prediction_log(folder, spec.name, since=since)


def alert_sink(root: Path, logger: logging.Logger = log):
    """Alerts of the release service: the alerts file and the webhook, like every other alert."""

    def notify(pipeline: str, job: str, reason: str) -> None:
        alert = Alert(iso_time(), pipeline, None, None, job, truncate(reason))
        deliver_alert(alert, Path(root), logger)

    return notify


def release_observation(spec: PipelineSpec, cursor: CanaryCursor, summary: str):
    """The release as metadata of the `promotion` asset, so the UI shows it on the asset page."""
    state = cursor.state
    metadata: dict = {"canary_summary": summary}
    if state is not None:
        metadata.update(
            {
                "canary_version": int(state.version),
                "canary_phase": str(state.phase),
                "canary_step": state.step,
                "failed_analyses": state.failed,
                "inconclusive_analyses": state.inconclusive,
                "release": cursor.release or "",
            }
        )
    for check in cursor.checks:
        metadata[f"check_{check['name']}"] = f"{check['status']}: {check['detail']}"
    return dg.AssetObservation(asset_key=asset_key(spec, "promotion"), metadata=metadata)


def build_canary_sensor(spec: PipelineSpec) -> dg.SensorDefinition:
    """Running by default in canary mode; a tick with no canary in flight does nothing."""
    status = (
        dg.DefaultSensorStatus.RUNNING
        if spec.deployment.mode == "canary"
        else dg.DefaultSensorStatus.STOPPED
    )

    @dg.sensor(
        name=f"{spec.name}_canary",
        minimum_interval_seconds=spec.deployment.canary.interval_seconds,
        default_status=status,
        description=(
            "Canary analysis: scrapes the serving app's /metrics and reads its prediction log, "
            "checks error rate, p99 latency, prediction shift from the shadow champion and "
            "online loss on the same requests, then ramps, promotes or rolls back. Every step "
            "goes to the audit trail and shows as an observation of the promotion asset."
        ),
    )
    def canary_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        root = default_root()
        cursor, summary = analyse(
            spec,
            registry_client(mlflow_uri(root)),
            root,
            CanaryCursor.from_json(context.cursor),
            scrape(serving_url()),
            validated_labels(root, spec),
            alert_sink(root, context.log),
            logged_predictions(root, spec),
        )
        context.log.info(summary)
        events = [] if cursor.state is None else [release_observation(spec, cursor, summary)]
        return dg.SensorResult(
            skip_reason=summary, cursor=cursor.to_json(), asset_events=events or None
        )

    return canary_sensor
