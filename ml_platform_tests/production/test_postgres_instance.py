"""The Dagster instance on PostgreSQL (dagster-postgres), as `deploy/dagster.postgres.yaml` ships.

This fails if the driver/SQLAlchemy combination stops working (SQLAlchemy 2.1 maps a bare
`postgresql://` to psycopg 3, on which dagster-postgres's NOTIFY breaks).
"""

from __future__ import annotations

import dagster as dg
import pytest

from ml_platform.production import _connect
from ml_platform.runs import materialize
from ml_platform_tests.conftest import day, generate

pytestmark = pytest.mark.slow
INGEST = ["raw", "validated", "quarantine", "features"]


def test_ingest_runs_and_events_live_in_postgres(postgres_project, pg_database, spec):
    root = postgres_project
    generate(root, spec, stores=3, days=12)

    assert materialize(root, spec, INGEST)  # one range run over the 12 days
    assert materialize(root, spec, INGEST, partition=day(11, spec))  # a new day: its own run

    instance = dg.DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        runs = instance.get_runs()
        assert len(runs) == 2
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        expected = {day(i, spec) for i in range(12)}
        for stage in INGEST:
            done = instance.get_materialized_partitions(dg.AssetKey([spec.name, stage]))
            assert done == expected, stage
        last = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "raw"]))
        assert last.run_id == runs[0].run_id  # the newest run, read back from the event log
        assert last.asset_materialization.partition == day(11, spec)
        records = instance.fetch_materializations(dg.AssetKey([spec.name, "validated"]), limit=50)
        assert len(records.records) == 13  # 12 days in the range run, then the new day again
    finally:
        instance.dispose()

    # The rows are in this test's own database, read with a plain SQL client.
    conn = _connect(pg_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] == 2
            cur.execute(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            )
            assert cur.fetchone()[0] == 13 * len(INGEST)
    finally:
        conn.close()
