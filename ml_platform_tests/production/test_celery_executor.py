"""Runs executed by dagster-celery workers on RabbitMQ, against the PostgreSQL instance.

The executor and the backfill split are chosen by environment only (`ML_PLATFORM_EXECUTOR`,
`ML_PLATFORM_MAX_PARTITIONS_PER_RUN`); the pipelines are unchanged.
"""

from __future__ import annotations

import dagster as dg
import pytest

from ml_platform.production import delete_celery_queue, start_celery_workers
from ml_platform.runs import materialize
from ml_platform_tests.conftest import day, generate
from ml_platform_tests.production.conftest import unique

pytestmark = pytest.mark.slow
INGEST = ["raw", "validated", "quarantine", "features"]
DAYS, BATCH = 40, 10


@pytest.fixture
def celery_workers(postgres_project, monkeypatch, tmp_path):
    queue = unique("mlp_test")
    monkeypatch.setenv("ML_PLATFORM_EXECUTOR", "celery")
    monkeypatch.setenv("ML_PLATFORM_CELERY_QUEUE", queue)
    monkeypatch.setenv("ML_PLATFORM_MAX_PARTITIONS_PER_RUN", str(BATCH))
    workers = start_celery_workers(2, queue, tmp_path / "celery")
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        delete_celery_queue(queue)


def test_landing_range_is_ingested_by_two_celery_workers(postgres_project, celery_workers, spec):
    root = postgres_project
    generate(root, spec, stores=3, days=DAYS)

    assert materialize(root, spec, INGEST)

    instance = dg.DagsterInstance.get()
    try:
        runs = instance.get_runs()
        # raw+validated, then features: each in runs of BATCH days, batches of a wave at once
        assert len(runs) == 2 * DAYS // BATCH
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        expected = {day(i, spec) for i in range(DAYS)}
        for stage in INGEST:
            done = instance.get_materialized_partitions(dg.AssetKey([spec.name, stage]))
            assert done == expected, stage
        hosts = set()  # the worker each step ran on, as the worker reported it
        for run in runs:
            for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                metadata = record.dagster_event.engine_event_data.metadata
                if "Celery worker" in metadata:
                    hosts.add(metadata["Celery worker"].value)
        assert len(hosts) == 2, hosts  # both workers took steps

        # A new day is one small run, whatever the batch size.
        assert materialize(root, spec, INGEST, partition=day(DAYS - 1, spec))
        assert len(instance.get_runs()) == len(runs) + 1
    finally:
        instance.dispose()
    logs = [worker.log.read_text() for worker in celery_workers]
    for log in logs:
        assert "succeeded in" in log  # celery's line for each finished step task
    assert sum(f"{spec.name}__validated" in log for log in logs) >= 1
