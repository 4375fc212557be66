"""The embedded event log: batched writes leave exactly what one-by-one writes leave.

Two real instances with our `PooledSqliteEventLogStorage` run the same range backfill, one with
Dagster's event batching off and one with it on; everything the UI and the asset graph read from
the event log must match.
"""

import os
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.schema import AssetKeyTable

from ml_platform.dagster_storage import (
    EVENT_BATCH_SIZE,
    EVENT_BATCH_SIZE_ENV,
    PooledSqliteEventLogStorage,
)
from ml_platform.instance import dagster_yaml

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-31")
RANGE = {
    "dagster/asset_partition_range_start": "2024-01-01",
    "dagster/asset_partition_range_end": "2024-01-30",
}
COMMON = {
    "partitions_def": DAYS,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "code_version": "1",  # else the run id, which differs between the two instances
}


@dg.asset(**COMMON, check_specs=[dg.AssetCheckSpec("non_empty", asset="upstream")])
def upstream(context: dg.AssetExecutionContext):
    for key in context.partition_keys:
        context.add_asset_metadata({"rows": len(key)}, partition_key=key)
    return dg.MaterializeResult(
        data_version=dg.DataVersion("v1"),
        check_results=[dg.AssetCheckResult(check_name="non_empty", passed=True)],
    )


@dg.asset(**COMMON, deps=[upstream])
def downstream(context: dg.AssetExecutionContext) -> None:
    if "2024-01-30" in context.partition_keys and context.run.tags.get("fail") == "yes":
        raise dg.Failure("a broken batch")


def instance_at(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(dagster_yaml(home))
    return dg.DagsterInstance.from_config(str(home))


def run_backfills(instance: dg.DagsterInstance) -> None:
    dg.materialize([upstream, downstream], instance=instance, tags=RANGE)
    failed = dg.materialize(
        [upstream, downstream],
        instance=instance,
        tags={**RANGE, "fail": "yes"},
        raise_on_error=False,
    )
    assert not failed.success


def snapshot(instance: dg.DagsterInstance) -> dict:
    """What the UI and the asset graph read: run logs, asset rows, partitions, versions, checks."""
    runs = list(reversed(instance.get_runs()))  # oldest first
    logs = [
        [
            (e.dagster_event_type, e.dagster_event.asset_key, e.dagster_event.partition)
            for e in instance.all_logs(run.run_id)
            if e.dagster_event
        ]
        for run in runs
    ]
    keys = [upstream.key, downstream.key]
    records = {r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records(keys)}
    run_index = {run.run_id: i for i, run in enumerate(runs)}
    storage = instance.event_log_storage
    attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(
        downstream.key
    )
    return {
        "logs": logs,
        "materialized": {k: sorted(instance.get_materialized_partitions(k)) for k in keys},
        "last_materialization": {
            k: (
                records[k].last_materialization.dagster_event.partition,
                run_index[records[k].last_materialization.run_id],
            )
            for k in keys
        },
        "last_run": {k: run_index[records[k].last_run_id] for k in keys},
        "data_version_tags": {  # the data version and provenance of each partition
            day: instance.get_latest_data_version_record(
                upstream.key, partition_key=day
            ).asset_materialization.tags
            for day in ("2024-01-01", "2024-01-30")
        },
        "attempted_not_materialized": {  # how the UI finds failed partitions
            partition: run_index[run_id] for partition, (run_id, _) in attempts.items()
        },
        "indexed_tags": {k: storage.get_event_tags_for_asset(k) for k in keys},
        "checks": [
            (e.status, e.partition)
            for e in instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(upstream.key, "non_empty"), limit=10
            )
        ],
    }


def test_batched_event_writes_leave_the_same_event_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")
    one_by_one = instance_at(tmp_path / "single")
    run_backfills(one_by_one)
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "7")  # batches that split groups of partitions
    batched = instance_at(tmp_path / "batched")
    assert isinstance(batched.event_log_storage, PooledSqliteEventLogStorage)
    run_backfills(batched)

    expected, actual = snapshot(one_by_one), snapshot(batched)
    assert len(expected["logs"][0]) > 2 * 30  # planned + materialised events of 30 partitions
    assert actual == expected
    assert expected["materialized"][downstream.key] == [
        f"2024-01-{d:02d}" for d in range(1, 31)
    ]  # the failed run materialised nothing of downstream
    assert expected["last_run"][upstream.key] == 1
    assert expected["data_version_tags"]["2024-01-30"]["dagster/data_version"] == "v1"
    assert (
        sorted(expected["attempted_not_materialized"]) == expected["materialized"][downstream.key]
    )  # the failed run's planned partitions of downstream


def asset_rows(storage: PooledSqliteEventLogStorage, key: dg.AssetKey) -> tuple:
    entry = storage.get_asset_records([key])[0].asset_entry
    last = entry.last_materialization_record
    with storage.index_connection() as conn:
        row = conn.execute(
            AssetKeyTable.select().where(AssetKeyTable.c.asset_key == key.to_string())
        ).one()
    return (
        # the asset_keys row as written (its create_timestamp is the wall clock of the insert)
        {k: v for k, v in row._asdict().items() if k != "create_timestamp"},
        last.storage_id if last else None,
        entry.last_run_id,
        entry.last_planned_materialization_storage_id,
        storage.get_event_tags_for_asset(key),
        sorted(storage.get_materialized_partitions(key)),
    )


def test_a_mixed_batch_is_stored_as_its_events_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Replays a real run's log, in orders Dagster's own batches never have, through both paths."""
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")
    source = instance_at(tmp_path / "source")
    dg.materialize([upstream, downstream], instance=source, tags=RANGE)
    events = source.all_logs(source.get_runs()[0].run_id)
    materialized = [
        e for e in events if e.dagster_event and e.dagster_event.is_step_materialization
    ]
    planned = [
        e for e in events if e.dagster_event and e.dagster_event.is_asset_materialization_planned
    ]
    # the whole log (asset events between run and step events), then materialisations followed
    # by planned events of the same assets in one batch
    for batch in (events, materialized + planned):
        single = PooledSqliteEventLogStorage(str(tmp_path / "single" / str(len(batch))))
        batched = PooledSqliteEventLogStorage(str(tmp_path / "batched" / str(len(batch))))
        for event in batch:
            single.store_event(event)
        batched.store_event_batch(batch)
        assert [e.dagster_event_type for e in batched.get_logs_for_run(events[0].run_id)] == [
            e.dagster_event_type for e in single.get_logs_for_run(events[0].run_id)
        ]
        for key in (upstream.key, downstream.key):
            assert asset_rows(batched, key) == asset_rows(single, key)
        assert asset_rows(batched, upstream.key)[0] is not None


def test_the_storage_switches_batching_on_unless_the_operator_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV, raising=False)
    assert instance_at(tmp_path / "default").event_log_storage is not None
    assert os.environ[EVENT_BATCH_SIZE_ENV] == EVENT_BATCH_SIZE
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")
    assert instance_at(tmp_path / "operator").event_log_storage is not None
    assert os.environ[EVENT_BATCH_SIZE_ENV] == "0"
