"""Dagster objects built from `ml_platform.names`: asset keys and the daily partitions.

Here, below both, because the assets and the sensors need the same keys and may not import each
other.
"""

from __future__ import annotations

import dagster as dg

from ml_platform.specs import PipelineSpec


def asset_key(spec: PipelineSpec, stage: str) -> dg.AssetKey:
    return dg.AssetKey([spec.name, stage])


def daily_partitions(spec: PipelineSpec) -> dg.DailyPartitionsDefinition:
    """The day keys every daily asset and the landing sensor share."""
    return dg.DailyPartitionsDefinition(start_date=spec.landing.start_date.isoformat())
