"""Automation per pipeline spec: landing sensor, drift sensor, retrain schedule; one alert sensor.

Each sensor has its own module, with the reasoning that makes it exactly-once at its top:
`landing_sensor.py`, `drift_sensor.py` and `failure_sensor.py`. This module puts one pipeline's
automation together; the names they use are in `ml_platform.names`.
"""

from __future__ import annotations

import dagster as dg

from ml_platform.automation.drift_sensor import build_drift_sensor, drift_report_key
from ml_platform.automation.failure_sensor import build_failure_sensor
from ml_platform.automation.landing_sensor import (
    MAX_RANGES_PER_TICK,
    LandingCursor,
    build_landing_sensor,
)
from ml_platform.automation.schedules import build_retrain_schedule
from ml_platform.specs import PipelineSpec

__all__ = [
    "MAX_RANGES_PER_TICK",
    "LandingCursor",
    "build_automation",
    "build_failure_sensor",
    "drift_report_key",
]


def build_automation(
    spec: PipelineSpec,
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    """Everything that launches runs for one pipeline on its own."""
    return [build_landing_sensor(spec), build_drift_sensor(spec)], [build_retrain_schedule(spec)]
