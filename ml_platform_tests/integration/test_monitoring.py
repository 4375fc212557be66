"""drift_report on a real instance: clean days raise nothing, a drifted fortnight raises the
dataset-drift flag, concept drift on the stored predictions and a failed WARN check."""

from __future__ import annotations

import base64
from datetime import timedelta
from xml.etree import ElementTree

import dagster as dg
import pandas as pd
import pytest

from ml_platform.demo import run_demo
from ml_platform_tests.conftest import failure_messages, generate

pytestmark = pytest.mark.slow
INGEST = "sales_forecast_ingest"


def ingest_range(root, first: str, last: str, selection: list[dg.AssetKey] | None = None):
    from ml_platform.assemble import build_definitions

    job = build_definitions(root).resolve_job_def(INGEST)
    return job.execute_in_process(
        instance=dg.DagsterInstance.get(),
        tags={
            "dagster/asset_partition_range_start": first,
            "dagster/asset_partition_range_end": last,
        },
        raise_on_error=False,
        asset_selection=selection,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def report_for(spec, partition: str):
    instance = dg.DagsterInstance.get()
    key = dg.AssetKey([spec.name, "drift_report"])
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(key, asset_partitions=[partition]), limit=1
    ).records[0]
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(key, "no_dataset_drift")]
    )[dg.AssetCheckKey(key, "no_dataset_drift")]
    evaluation = check.event.dagster_event.event_specific_data
    return record.asset_materialization.metadata, evaluation


def stored_predictions(root, spec, first, days: int) -> int:
    folder = root / "data" / spec.name / "predictions"
    names = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    return sum(len(pd.read_parquet(folder / f"{name}.parquet")) for name in names)


def assert_single_day_equals_range_day(root, spec, day: str) -> None:
    """A day's report from the range run above is byte for byte what a run of that day writes."""
    from ml_platform.assemble import build_definitions

    key = dg.AssetKey([spec.name, "drift_report"])
    path = root / "data" / spec.name / "drift_report" / f"{day}.parquet"
    from_range = path.read_bytes()
    range_meta, _ = report_for(spec, day)
    result = (
        build_definitions(root)
        .resolve_job_def(INGEST)
        .execute_in_process(
            instance=dg.DagsterInstance.get(),
            partition_key=day,
            asset_selection=[key],
            raise_on_error=False,
        )
    )
    assert result.success, failure_messages(result)
    single_meta, _ = report_for(spec, day)
    assert path.read_bytes() == from_range
    compared = ("md5", "report", "drift_share", "max_psi", "concept_mae_ratio")
    for name in (*compared, "concept_labelled_rows"):
        assert single_meta[name].value == range_meta[name].value, name


def test_clean_then_drifted_landing_files(isolated_env, spec):
    root = isolated_env
    generate(root, spec, stores=20, days=150, seed=5)
    assert run_demo(root, spec.name) == 0
    start = spec.landing.start_date + timedelta(days=150)

    generate(root, spec, stores=20, days=14, seed=5)
    last_clean = (start + timedelta(days=13)).isoformat()
    result = ingest_range(root, start.isoformat(), last_clean)
    assert result.success, failure_messages(result)
    meta, check = report_for(spec, last_clean)
    assert meta["dataset_drift"].value is False
    assert meta["in_sample"].value is False
    assert check.passed is True
    # Concept drift scores the champion's stored predictions of the 13 days whose label arrived.
    assert meta["concept_labelled_rows"].value == stored_predictions(root, spec, start, 13)
    assert meta["concept_drift"].value is False

    shifted_from = start + timedelta(days=14)
    generate(root, spec, stores=20, days=14, seed=5, shift_from=shifted_from, shift_strength=1.0)
    last_shifted = (shifted_from + timedelta(days=13)).isoformat()
    result = ingest_range(root, shifted_from.isoformat(), last_shifted)
    assert result.success, failure_messages(result)
    meta, check = report_for(spec, last_shifted)
    assert meta["dataset_drift"].value is True
    assert meta["drift_share"].value >= spec.drift.drift_share
    assert "units_sold" in meta["drifted_columns"].value
    assert meta["concept_drift"].value is True  # the shifted days' labels defeat the champion
    assert meta["concept_mae_ratio"].value > spec.drift.concept_drift_tolerance
    assert check.passed is False
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert_single_day_equals_range_day(root, spec, (shifted_from + timedelta(days=6)).isoformat())
    prefix = "data:image/svg+xml;base64,"
    assert prefix in meta["plot"].value
    encoded = meta["plot"].value.split(prefix, 1)[1].rstrip(")")
    svg = ElementTree.fromstring(base64.b64decode(encoded))
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text") if t.text]
    assert any(t.startswith("units_sold") and "drifted" in t for t in titles), titles

    # Days nobody predicted (predictions not materialised) still get a report; concept drift
    # scores only the window's days that were predicted, instead of failing the report.
    unpredicted = shifted_from + timedelta(days=14)
    generate(root, spec, stores=20, days=2, seed=5, start=unpredicted)
    day = (unpredicted + timedelta(days=1)).isoformat()
    stages = ["raw", "validated", "quarantine", "features", "drift_report"]
    selection = [dg.AssetKey([spec.name, stage]) for stage in stages]
    result = ingest_range(root, unpredicted.isoformat(), day, selection=selection)
    assert result.success, failure_messages(result)
    meta, _ = report_for(spec, day)
    assert meta["concept_labelled_rows"].value == stored_predictions(
        root, spec, unpredicted - timedelta(days=12), 12
    )
    assert meta["dataset_drift"].value is True
