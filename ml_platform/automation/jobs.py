"""Jobs per pipeline: daily ingest (partitioned) and retraining (unpartitioned)."""

from __future__ import annotations

import dagster as dg

from ml_platform.specs import PipelineSpec

INGEST_STAGES = ("raw", "validated", "quarantine", "features", "predictions", "drift_report")
TRAINING_STAGES = ("training_set", "challenger", "promotion")


def ingest_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_ingest"


def training_job_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_training"


def build_jobs(spec: PipelineSpec) -> list[dg.UnresolvedAssetJobDefinition]:
    def keys(stages: tuple[str, ...]) -> list[dg.AssetKey]:
        return [dg.AssetKey([spec.name, s]) for s in stages]

    return [
        dg.define_asset_job(
            ingest_job_name(spec),
            selection=dg.AssetSelection.assets(*keys(INGEST_STAGES)),
            description="Ingest daily landing files up to features and predictions.",
            tags={"ml_platform/pipeline": spec.name},
        ),
        dg.define_asset_job(
            training_job_name(spec),
            selection=dg.AssetSelection.assets(*keys(TRAINING_STAGES)),
            description="Build the training set, train a challenger and run the promotion gate.",
            tags={"ml_platform/pipeline": spec.name},
        ),
    ]
