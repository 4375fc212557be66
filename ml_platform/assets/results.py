"""Shared helpers that turn core results into Dagster outputs with useful metadata."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

from ml_platform.core.storage import EncodedFrame, combined_md5


def partition_dates(context: dg.AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(k) for k in context.partition_keys]


def column_schema(encoded: EncodedFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=c, type=t) for c, t in encoded.dtypes])


def markdown_table(frame: pd.DataFrame, max_rows: int = 20) -> dg.MetadataValue:
    if frame.empty:
        return dg.MetadataValue.md("_none_")
    shown = frame.head(max_rows)
    text = shown.to_markdown(index=False)
    if len(frame) > max_rows:
        text += f"\n\n_{len(frame) - max_rows} more rows not shown_"
    return dg.MetadataValue.md(text)


def partitioned_output(
    context: dg.AssetExecutionContext,
    encoded: Mapping[str, EncodedFrame],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    output_name: str = "result",
    asset_key: dg.AssetKey | None = None,
    version_by_partition: Mapping[str, str] | None = None,
) -> dg.Output:
    """One output for a single partition or a range run.

    A single-partition run gets that partition's md5 as its `DataVersion`. A range run must share
    one version (Dagster takes one per output), so each partition's md5 goes into its own metadata.
    """
    extra = extra or {}
    versions = dict(version_by_partition or {k: v.md5 for k, v in encoded.items()})
    per_partition = {
        key: {
            "md5": versions[key],
            "dagster/row_count": value.rows,
            "dagster/column_schema": column_schema(value),
            **extra.get(key, {}),
        }
        for key, value in encoded.items()
    }
    if len(encoded) == 1:
        ((key, value),) = encoded.items()
        return dg.Output(
            value,
            output_name=output_name,
            data_version=dg.DataVersion(versions[key]),
            metadata=per_partition[key],
        )
    for key, metadata in per_partition.items():
        context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=key)
    return dg.Output(
        dict(encoded),
        output_name=output_name,
        data_version=dg.DataVersion(combined_md5(list(versions.values()))),
    )


def frame_output(encoded: EncodedFrame, metadata: Mapping[str, Any]) -> dg.Output:
    """Output for an unpartitioned frame, versioned by its content hash."""
    return dg.Output(
        encoded,
        data_version=dg.DataVersion(encoded.md5),
        metadata={
            "md5": encoded.md5,
            "dagster/row_count": encoded.rows,
            "dagster/column_schema": column_schema(encoded),
            **metadata,
        },
    )
