"""The daily drift report: data drift against the champion's training reference, plus concept
drift (the error of the champion's stored predictions, once their labels arrive, against its
holdout error)."""

import base64
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from ml_platform.assets.ingest import asset_key, backfill_policy
from ml_platform.assets.modeling import HOLDOUT_LOSS_TAG
from ml_platform.assets.results import partition_dates, partitioned_output
from ml_platform.core.drift_days import (
    DayDrift,
    daily_drift,
    drift_columns,
    thresholds_for,
    window_of,
)
from ml_platform.core.drift_plot import plot_top_drifted
from ml_platform.core.storage import atomic_write, encode_frame
from ml_platform.resources.platform import PlatformPaths
from ml_platform.resources.registry import CHAMPION, ModelRegistry
from ml_platform.specs import PipelineSpec

DRIFT_CHECK = "no_dataset_drift"
__all__ = ["DRIFT_CHECK", "build_monitoring_assets", "drift_columns", "thresholds_for"]


def build_monitoring_assets(
    spec: PipelineSpec, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    key = asset_key(spec, "drift_report")
    mapping = dg.TimeWindowPartitionMapping(
        start_offset=-spec.drift.window_days, allow_nonexistent_upstream_partitions=True
    )

    @dg.asset(
        key=key,
        partitions_def=partitions,
        backfill_policy=backfill_policy(),
        group_name=spec.name,
        io_manager_key="parquet_io",
        output_required=False,
        ins={
            "features": dg.AssetIn(asset_key(spec, "features"), partition_mapping=mapping),
            # Days predicted before the champion existed have no partition: read as no rows.
            "predictions": dg.AssetIn(
                asset_key(spec, "predictions"),
                partition_mapping=mapping,
                metadata={"allow_missing": True},
            ),
        },
        deps=[asset_key(spec, "promotion")],
        kinds={"pandas"},
        check_specs=[
            dg.AssetCheckSpec(
                DRIFT_CHECK,
                asset=key,
                description=(
                    "Warns when the share of drifted features reaches the spec's drift_share."
                ),
            )
        ],
        description="Data drift and concept drift of recent days against the champion.",
    )
    def drift_report(
        context: dg.AssetExecutionContext,
        features: pd.DataFrame,
        predictions: pd.DataFrame,
        registry: ModelRegistry,
        paths: PlatformPaths,
    ) -> Iterator:
        version = registry.alias_version(spec.name, CHAMPION)
        if version is None:
            context.log.warning(
                f"registered model {spec.name!r} has no champion yet; "
                "no drift report until a model is promoted"
            )
            yield dg.AssetCheckResult(
                check_name=DRIFT_CHECK,
                asset_key=key,
                passed=True,
                description="not evaluated: no champion to compare with",
            )
            return
        reference = registry.load_reference(spec.name, version)
        holdout = version.tags.get(HOLDOUT_LOSS_TAG, version.tags.get("holdout_mae"))
        days = daily_drift(
            reference,
            features,
            predictions,
            partition_dates(context),
            spec=spec,
            model_version=int(version.version),
            holdout_loss=float(holdout),
        )
        tables = {
            d.day.isoformat(): encode_frame(pd.DataFrame([c.to_dict() for c in d.report.columns]))
            for d in days
        }
        extra = {d.day.isoformat(): _metadata(d, int(version.version), spec) for d in days}
        last = days[-1]
        day, report, concept = last.day, last.report, last.concept
        svg = plot_top_drifted(reference, window_of(features, spec, day), report).encode()
        plot_path = paths.state_dir / "reports" / spec.name / f"drift_{day.isoformat()}.svg"
        atomic_write(plot_path, svg)
        extra[day.isoformat()]["plot"] = dg.MetadataValue.md(
            f"![top drifted features](data:image/svg+xml;base64,{base64.b64encode(svg).decode()})"
        )
        extra[day.isoformat()]["plot_file"] = dg.MetadataValue.path(str(plot_path))
        yield partitioned_output(context, tables, extra)
        drifted = report.dataset_drift or concept["drifted"]
        yield dg.AssetCheckResult(
            check_name=DRIFT_CHECK,
            asset_key=key,
            passed=not drifted,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{day}: drift_share {report.drift_share:.2f}, concept ratio "
            f"{concept['ratio'] if concept['ratio'] is not None else 'n/a'}",
            metadata={
                "drift_share": float(report.drift_share),
                "drifted_columns": ", ".join(report.drifted_columns) or "none",
            },
        )

    return [drift_report]


def _metadata(d: DayDrift, version: int, spec: PipelineSpec) -> dict:
    report, concept, loss = d.report, d.concept, spec.loss_name
    return {
        "dataset_drift": bool(report.dataset_drift),
        "drift_share": float(report.drift_share),
        "max_psi": float(report.max_psi),
        "drifted_columns": ", ".join(report.drifted_columns) or "none",
        "concept_drift": bool(concept["drifted"]),
        f"concept_{loss}_ratio": float(concept["ratio"]) if concept["ratio"] is not None else 0.0,
        f"concept_{loss}_current": float(concept["mae_current"] or 0.0),
        f"concept_{loss}_holdout": float(concept["mae_holdout"]),
        "concept_labelled_rows": int(concept["n"]),
        "champion_version": version,
        "report": dg.MetadataValue.md(report.to_markdown()),
        "in_sample": d.in_sample,
    }
