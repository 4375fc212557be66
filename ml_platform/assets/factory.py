"""The asset factory: one pipeline spec in, one asset group `<name>/*` out."""

from __future__ import annotations

import dagster as dg

from ml_platform.assets.ingest import build_ingest_assets
from ml_platform.assets.modeling import build_modeling_assets
from ml_platform.assets.monitoring import build_monitoring_assets
from ml_platform.resources.keys import daily_partitions
from ml_platform.specs import PipelineSpec


def build_pipeline_assets(spec: PipelineSpec) -> list[dg.AssetsDefinition]:
    """Every asset of one pipeline, sharing one daily partitions definition."""
    partitions = daily_partitions(spec)
    return [
        *build_ingest_assets(spec, partitions),
        *build_modeling_assets(spec, partitions),
        *build_monitoring_assets(spec, partitions),
    ]
