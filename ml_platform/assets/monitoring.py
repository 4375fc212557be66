"""The daily drift report: data drift against the champion's training reference, plus concept
drift (the error of the champion's stored predictions, once their labels arrive, against its
holdout error)."""

import base64
import dataclasses
from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from ml_platform.assets.ingest import asset_key, backfill_policy
from ml_platform.assets.modeling import HOLDOUT_LOSS_TAG
from ml_platform.assets.results import partition_dates, partitioned_output
from ml_platform.core import training
from ml_platform.core.drift import DriftThresholds, compute_drift, concept_drift
from ml_platform.core.drift_plot import plot_top_drifted
from ml_platform.core.storage import atomic_write, encode_frame
from ml_platform.resources.platform import PlatformPaths
from ml_platform.resources.registry import CHAMPION, ModelRegistry
from ml_platform.specs import PipelineSpec

DRIFT_CHECK = "no_dataset_drift"


def drift_columns(spec: PipelineSpec) -> dict[str, str]:
    """Model inputs plus the target; calendar columns drift by construction, so not them."""
    calendar = set(spec.features.calendar)
    categorical = set(spec.features.categorical)
    return {
        c: "categorical" if c in categorical else "numeric"
        for c in [spec.target, *spec.feature_columns]
        if c not in calendar
    }


def thresholds_for(spec: PipelineSpec) -> DriftThresholds:
    return DriftThresholds(
        psi=spec.drift.psi_threshold,
        wasserstein=spec.drift.wasserstein_threshold,
        js=spec.drift.js_threshold,
        drift_share=spec.drift.drift_share,
    )


def build_monitoring_assets(
    spec: PipelineSpec, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    key = asset_key(spec, "drift_report")
    mapping = dg.TimeWindowPartitionMapping(
        start_offset=-spec.drift.window_days, allow_nonexistent_upstream_partitions=True
    )
    thresholds = thresholds_for(spec)

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
        reference_end = pd.Timestamp(reference[spec.timestamp].max())
        days = partition_dates(context)
        tables, extra, last = {}, {}, None
        for day in days:
            window = _window(features, spec, day)
            report = compute_drift(
                reference, window, columns=drift_columns(spec), thresholds=thresholds
            )
            if pd.Timestamp(day) <= reference_end:  # the model has seen these days: no verdict
                report = dataclasses.replace(report, dataset_drift=False)
            concept = _concept(predictions, window, spec, version)
            tables[day.isoformat()] = encode_frame(
                pd.DataFrame([c.to_dict() for c in report.columns])
            )
            extra[day.isoformat()] = _metadata(report, concept, int(version.version), spec)
            extra[day.isoformat()]["in_sample"] = bool(pd.Timestamp(day) <= reference_end)
            last = (day, window, report, concept)
        day, window, report, concept = last
        svg = plot_top_drifted(reference, window, report).encode()
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


def _window(features: pd.DataFrame, spec: PipelineSpec, day: date) -> pd.DataFrame:
    ts = features[spec.timestamp]
    start = pd.Timestamp(day - timedelta(days=spec.drift.window_days - 1))
    return features[(ts >= start) & (ts <= pd.Timestamp(day))].reset_index(drop=True)


def _concept(
    predictions: pd.DataFrame, window: pd.DataFrame, spec: PipelineSpec, version: ModelVersion
) -> dict:
    """Loss of the champion's stored predictions for the window, where the label has arrived,
    against its holdout loss (MAE, or log loss for a classifier)."""
    losses = training.realised_losses(predictions, window, spec, int(version.version))
    holdout = version.tags.get(HOLDOUT_LOSS_TAG, version.tags.get("holdout_mae"))
    return concept_drift(losses, float(holdout), spec.drift.concept_drift_tolerance)


def _metadata(report, concept: dict, version: int, spec: PipelineSpec) -> dict:
    loss = spec.loss_name
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
    }
