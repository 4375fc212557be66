"""The whole graph on a real Dagster instance and a real MLflow store (both in temp folders)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import dagster as dg
import pytest

from ml_platform_tests.conftest import day, failure_messages, registry_for, run_job

pytestmark = pytest.mark.slow
INGEST, TRAINING = "sales_forecast_ingest", "sales_forecast_training"


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def latest(key: list[str], partition: str | None = None):
    instance = dg.DagsterInstance.get()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            dg.AssetKey(key), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return records[0].asset_materialization if records else None


def test_demo_promotes_a_champion_with_evidence_and_lineage(platform, spec):
    registry = registry_for(platform)
    champion = registry.alias_version(spec.name, "champion")
    assert champion is not None
    tags = champion.tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.vs_baseline.p_value"]) < spec.promotion.alpha
    assert float(tags["promotion.vs_baseline.relative_improvement"]) >= 0.01
    for key in ("training_set_md5", "spec_hash", "dagster_run_id", "source_hash"):
        assert tags[key] not in ("", "unknown"), key
    assert tags["git_commit"]  # "unknown" here: the temp project is not a git checkout
    assert tags["training_set_md5"] == latest([spec.name, "training_set"]).metadata["md5"].value
    promotion = latest([spec.name, "promotion"])
    assert promotion.metadata["decision"].value == "promoted"
    assert promotion.metadata["mae_challenger"].value < promotion.metadata["mae_baseline"].value


def test_data_versions_are_content_hashes(platform, spec):
    partition = day(100, spec)
    validated = latest([spec.name, "validated"], partition)
    stored = platform / "data" / spec.name / "validated" / f"{partition}.parquet"
    assert validated.metadata["md5"].value == md5(stored)
    raw = latest([spec.name, "raw"], partition)
    landing = platform / spec.landing.directory / f"{partition}.csv"
    assert raw.metadata["md5"].value == md5(landing)
    training = latest([spec.name, "training_set"])
    assert training.tags["dagster/data_version"] == md5(
        platform / "data" / spec.name / "training_set.parquet"
    )


def test_single_partition_run_carries_its_own_md5_as_data_version(platform, spec):
    partition = day(20, spec)
    assert run_job(platform, INGEST, partition, [dg.AssetKey([spec.name, "raw"])]).success
    raw = latest([spec.name, "raw"], partition)
    landing = platform / spec.landing.directory / f"{partition}.csv"
    assert raw.tags["dagster/data_version"] == md5(landing)


def test_retraining_on_same_data_and_code_registers_nothing_new(platform, spec):
    registry = registry_for(platform)
    before = registry.client().search_model_versions(f"name = '{spec.name}'")
    result = run_job(platform, TRAINING)
    assert result.success, failure_messages(result)
    after = registry.client().search_model_versions(f"name = '{spec.name}'")
    assert len(after) == len(before)
    challenger = latest([spec.name, "challenger"])
    assert challenger.metadata["reused"].value is True
    assert latest([spec.name, "promotion"]).metadata["decision"].value == "unchanged"


def test_predictions_cover_every_entity_for_the_next_day(platform, spec):
    partition = day(150, spec)
    import pandas as pd

    preds = pd.read_parquet(platform / "data" / spec.name / "predictions" / f"{partition}.parquet")
    assert sorted(preds["store_id"]) == ["S0001", "S0002", "S0003", "S0004"]
    assert (preds["prediction_for"] == pd.Timestamp(partition) + timedelta(days=1)).all()
    assert (preds["prediction"] >= 0).all()


@pytest.mark.parametrize(
    ("offset", "content", "message"),
    [
        (
            160,
            "date,store_id,product_id,units,price,promo\n{d},S0001,P01,3,2.5,0\n",
            "missing required columns ['units_sold']",
        ),
        (161, "", "empty"),
        (162, "date,store_id,product_id,units_sold,price,promo\n", "no rows (header only)"),
        (
            163,
            "date,store_id,product_id,units_sold,price,promo\n"
            + "".join(f"not-a-date,S000{i},P01,3,2.5,0\n" for i in range(1, 5)),
            "date failed parse_date",
        ),
    ],
)
def test_hostile_file_fails_validation_and_changes_nothing(
    platform, spec, offset, content, message
):
    partition = day(offset, spec)
    landing = platform / spec.landing.directory / f"{partition}.csv"
    landing.write_text(content.format(d=partition))
    before = landing.read_bytes()
    champion = registry_for(platform).alias_version(spec.name, "champion").version

    result = run_job(platform, INGEST, partition)

    assert not result.success
    assert message in failure_messages(result)
    assert landing.read_bytes() == before  # raw input untouched
    assert latest([spec.name, "features"], partition) is None  # downstream did not run
    assert latest([spec.name, "predictions"], partition) is None
    assert registry_for(platform).alias_version(spec.name, "champion").version == champion


def test_corrupt_rows_are_quarantined_and_the_rest_flows_on(platform, spec):
    partition = day(170, spec)
    good = "".join(f"{partition},S{i:04d},P01,{i},2.50,0\n" for i in range(1, 25))
    bad = f"{partition},S0099,P01,-5,2.50,0\n"
    landing = platform / spec.landing.directory / f"{partition}.csv"
    landing.write_text("date,store_id,product_id,units_sold,price,promo\n" + good + bad)

    result = run_job(platform, INGEST, partition)

    assert result.success, failure_messages(result)
    validated = latest([spec.name, "validated"], partition)
    assert validated.metadata["rows_quarantined"].value == 1
    assert validated.metadata["dagster/row_count"].value == 24
    quarantine = latest([spec.name, "quarantine"], partition)
    assert quarantine.metadata["dagster/row_count"].value == 1
    assert latest([spec.name, "predictions"], partition) is not None
    checks = dg.DagsterInstance.get().event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey([spec.name, "validated"]), "contract")]
    )
    assert all(r.status.value == "SUCCEEDED" for r in checks.values())


def test_models_load_only_with_the_spec_trusted_types(platform, spec):
    """skops refuses a model whose types the spec does not list; the spec's list loads it."""
    from ml_platform.resources.registry import CHAMPION

    registry = registry_for(platform)
    with pytest.raises(ValueError, match=r"not in the spec's skops_trusted_types.*TreePredictor"):
        registry.load_model(spec.name, CHAMPION, [])
    model, _ = registry.load_model(spec.name, CHAMPION, spec.model.skops_trusted_types)
    assert list(model.feature_names_in_) == spec.feature_columns
    again, _ = registry.load_model(spec.name, CHAMPION, spec.model.skops_trusted_types)
    assert again is model  # a registered version never changes: each process loads it once
