"""Periodic retraining: a cron schedule per pipeline spec, off unless the spec turns it on."""

from __future__ import annotations

import dagster as dg

from ml_platform.names import (
    PIPELINE_TAG,
    TRIGGER_TAG,
    retrain_schedule_name,
    training_job_name,
)
from ml_platform.specs import PipelineSpec


def build_retrain_schedule(spec: PipelineSpec) -> dg.ScheduleDefinition:
    """Retrain on the spec's cron, even without drift: slow decay that no test flags still ages
    a model. STOPPED by default because every run costs compute and a new model version."""
    automation = spec.automation
    return dg.ScheduleDefinition(
        name=retrain_schedule_name(spec),
        cron_schedule=automation.retrain_cron,
        job_name=training_job_name(spec),
        execution_timezone="UTC",
        tags={TRIGGER_TAG: "schedule", PIPELINE_TAG: spec.name},
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if automation.retrain_schedule_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description=f"Retrain {spec.name} on `{automation.retrain_cron}` (UTC).",
    )
