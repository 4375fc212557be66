"""The `<pipeline>_canary` sensor: one Flagger-style analysis of a canary release per interval.

The decision logic is `ml_platform.serving.canary_release` (plain Python); this file only gives it
a schedule, a cursor and the labels that have arrived, and reports what it did as the tick's
skip reason, which the UI shows on the sensor's page.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd

from ml_platform.assets.ingest import asset_key
from ml_platform.core.features import encode_target
from ml_platform.core.storage import read_frame
from ml_platform.resources.io_manager import ParquetIOManager
from ml_platform.serving.canary_release import CanaryCursor, analyse, scrape
from ml_platform.serving.loader import registry_client
from ml_platform.settings import data_root, default_root, mlflow_uri, serving_url
from ml_platform.specs import PipelineSpec


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
            "Canary analysis: scrapes the serving app's /metrics, checks error rate, p99 latency, "
            "prediction drift against the champion and online MAE, then ramps, promotes or rolls "
            "back. Every step goes to the audit trail."
        ),
    )
    def canary_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        root = default_root()
        cursor, summary = analyse(
            spec,
            registry_client(mlflow_uri(root)),
            root,
            CanaryCursor.from_json(context.cursor),
            scrape(serving_url()),
            validated_labels(root, spec),
        )
        context.update_cursor(cursor.to_json())
        context.log.info(summary)
        return dg.SkipReason(summary)

    return canary_sensor
