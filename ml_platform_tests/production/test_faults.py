"""Faults in the production profile, as an operator's machines would have them.

- A Celery worker killed with SIGKILL while it runs a step (its whole process group, as a machine
  that dies): the step goes to the other worker (`settings.CELERY_RELIABILITY`), the run ends,
  every file is whole, and a re-run writes the same bytes.
- PostgreSQL connections cut mid-run (`pg_terminate_backend` on this test's database; the server is
  shared, so it is not restarted): the run ends with a clear state and a re-run completes.
- The MLflow server down during training: a clear failure, the champion unchanged, and a re-run
  against the server started again completes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ml_platform.production import _connect, delete_celery_queue, start_celery_workers
from ml_platform_tests.conftest import day, generate, wait_for
from ml_platform_tests.production.conftest import unique

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(1200)]
INGEST = ["raw", "validated", "quarantine", "features"]
DAYS = 45


def materialize_process(root: Path, log: Path) -> subprocess.Popen:
    """The CLI a user runs, with this process's environment (the profile is environment only)."""
    command = [
        str(Path(sys.executable).parent / "ml-platform"),
        "materialize",
        "sales_forecast",
        *INGEST,
    ]
    return subprocess.Popen(
        command, cwd=root, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def parquet_md5s(root: Path) -> dict[str, str]:
    """md5 of every data product, each read back whole by pyarrow first (no half file)."""
    found = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        pd.read_parquet(path)
        found[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def stored_md5s(spec, stage: str) -> dict[str, str]:
    """The md5 each partition's newest materialisation reported (for `raw`: the landing file's;
    for later stages: the parquet file's)."""
    instance = dg.DagsterInstance.get()
    try:
        found = {}
        for i in range(DAYS):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    dg.AssetKey([spec.name, stage]), asset_partitions=[day(i, spec)]
                ),
                limit=1,
            ).records
            found[day(i, spec)] = records[0].asset_materialization.metadata["md5"].value
        return found
    finally:
        instance.dispose()


def run_statuses() -> list[dg.DagsterRunStatus]:
    instance = dg.DagsterInstance.get()
    try:
        return [run.status for run in instance.get_runs()]
    finally:
        instance.dispose()


@pytest.fixture
def celery_env(postgres_project, monkeypatch):
    queue = unique("mlp_fault")
    monkeypatch.setenv("ML_PLATFORM_EXECUTOR", "celery")
    monkeypatch.setenv("ML_PLATFORM_CELERY_QUEUE", queue)
    monkeypatch.delenv("ML_PLATFORM_MAX_PARTITIONS_PER_RUN", raising=False)  # one run
    try:
        yield queue
    finally:
        delete_celery_queue(queue)


def test_a_worker_killed_mid_step_hands_the_step_over_and_nothing_is_half_written(
    postgres_project, celery_env, spec, tmp_path
):
    root = postgres_project
    generate(root, spec, stores=20, days=DAYS)
    workers = start_celery_workers(2, celery_env, tmp_path / "celery")
    try:
        process = materialize_process(root, tmp_path / "materialize.log")

        def taken():  # the first worker that received a step task
            return next((w for w in workers if "] received" in w.log.read_text()), None)

        victim = wait_for(taken, 300, "a worker to take a step")
        os.killpg(victim.process.pid, signal.SIGKILL)  # the worker and its pool, mid-step
        victim.process.wait(10)
        assert process.wait(timeout=600) in (0, 1)
        output = (tmp_path / "materialize.log").read_text(errors="replace")
        survivor = next(w for w in workers if w is not victim)
        assert "] received" in survivor.log.read_text()  # the survivor took the steps over
        statuses = run_statuses()
        assert statuses and all(s in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
                                for s in statuses), (statuses, output[-3000:])  # fmt: skip
        first = parquet_md5s(root)
        if process.returncode != 0:  # failed cleanly: the re-run below must complete it
            assert "FAILED" in output, output[-3000:]

        rerun = materialize_process(root, tmp_path / "rerun.log")
        assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    finally:
        for worker in workers:
            worker.stop()
    again = parquet_md5s(root)
    assert {k: v for k, v in again.items() if k in first} == first  # same bytes written again
    raw = {k for k in again if "/raw/" in k}
    assert len(raw) == DAYS
    landing = root / spec.landing.directory
    assert stored_md5s(spec, "raw") == {
        day(i, spec): hashlib.md5((landing / f"{day(i, spec)}.csv").read_bytes()).hexdigest()
        for i in range(DAYS)
    }  # each landing file, as it is on disk, is what was ingested
    validated = stored_md5s(spec, "validated")
    for name, md5 in again.items():
        if "/validated/" in name:
            assert validated[Path(name).stem] == md5  # the file is the one its event describes


def test_postgres_connections_cut_mid_run_end_clearly_and_a_rerun_completes(
    postgres_project, pg_database, celery_env, spec, tmp_path
):
    root = postgres_project
    generate(root, spec, stores=10, days=DAYS)
    workers = start_celery_workers(1, celery_env, tmp_path / "celery")
    stop = threading.Event()
    terminated = []

    def cut_connections():
        conn = _connect()
        try:
            with conn.cursor() as cur:
                while not stop.wait(0.05):  # Dagster's connections are short-lived
                    cur.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (pg_database,),
                    )
                    terminated.append(cur.fetchone()[0])
        finally:
            conn.close()

    cutter = threading.Thread(target=cut_connections, daemon=True)
    try:
        process = materialize_process(root, tmp_path / "materialize.log")
        wait_for(lambda: "] received" in workers[0].log.read_text(), 300, "a step on the worker")
        cutter.start()  # cut every connection to the run's database until the run ends
        code = process.wait(timeout=600)
        stop.set()
        cutter.join(30)
        output = (tmp_path / "materialize.log").read_text(errors="replace")
        assert sum(terminated) > 0, "no connection was cut: the test proved nothing"
        statuses = run_statuses()
        if code != 0:  # a clear failure, not a hang, names what went wrong
            assert "FAILED" in output or "Error" in output, output[-3000:]
        else:
            assert statuses and all(s == dg.DagsterRunStatus.SUCCESS for s in statuses)
        rerun = materialize_process(root, tmp_path / "rerun.log")
        assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    finally:
        stop.set()
        for worker in workers:
            worker.stop()
    assert len([k for k in parquet_md5s(root) if "/raw/" in k]) == DAYS
    assert len(stored_md5s(spec, "validated")) == DAYS


def test_mlflow_server_down_during_training_fails_clearly_and_keeps_the_champion(
    isolated_env, spec, monkeypatch, tmp_path, capsys
):
    """Embedded Dagster instance (the fault is MLflow's); the server on its own database."""
    from mlflow.tracking import MlflowClient

    from ml_platform.demo import materialize
    from ml_platform.production import drop_database, start_mlflow_server
    from ml_platform.resources.registry import CHAMPION

    root, database = isolated_env, unique("mlp_mlflow")
    artifacts = tmp_path / "server_artifacts"
    train = ["training_set", "challenger", "promotion"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # fail in seconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    server = start_mlflow_server(database, artifacts, log=tmp_path / "mlflow-1.log")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        generate(root, spec, stores=4, days=160, seed=3)
        assert materialize(root, spec, INGEST)
        assert materialize(root, spec, train)
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        champion = client.get_model_version_by_alias(spec.name, CHAMPION).version
        server.stop()
        capsys.readouterr()

        assert not materialize(root, spec, train)  # the server is gone
        printed = capsys.readouterr()
        text = printed.out + printed.err
        assert "FAILED" in text
        assert any(s in text for s in ("Connection refused", "Max retries", "MLflow", "mlflow"))

        server = start_mlflow_server(  # a loaded machine took over 180 s to start it again
            database, artifacts, log=tmp_path / "mlflow-2.log", timeout=600
        )
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # a new port, the same store
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        assert client.get_model_version_by_alias(spec.name, CHAMPION).version == champion
        assert materialize(root, spec, train)  # the re-run completes
    finally:
        server.stop()
        drop_database(database)
