"""Jobs per pipeline: daily ingest (partitioned) and retraining (unpartitioned)."""

from __future__ import annotations

import dagster as dg

from ml_platform.names import (
    INGEST_STAGES,
    PIPELINE_TAG,
    TRAINING_STAGES,
    ingest_job_name,
    training_job_name,
)
from ml_platform.resources.keys import asset_key
from ml_platform.specs import PipelineSpec


def build_jobs(spec: PipelineSpec) -> list[dg.UnresolvedAssetJobDefinition]:
    def keys(stages: tuple[str, ...]) -> list[dg.AssetKey]:
        return [asset_key(spec, s) for s in stages]

    return [
        dg.define_asset_job(
            ingest_job_name(spec),
            selection=dg.AssetSelection.assets(*keys(INGEST_STAGES)),
            description="Ingest daily landing files up to features and predictions.",
            tags={PIPELINE_TAG: spec.name},
        ),
        dg.define_asset_job(
            training_job_name(spec),
            selection=dg.AssetSelection.assets(*keys(TRAINING_STAGES)),
            description="Build the training set, train a challenger and run the promotion gate.",
            tags={PIPELINE_TAG: spec.name},
        ),
    ]
