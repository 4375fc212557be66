"""The production profile end to end: a landing file → the landing sensor under a real
`dagster-daemon` on the PostgreSQL instance → steps on two Celery workers over RabbitMQ →
predictions → the online store on Redis → `/predict` from a real `ml-platform serve`.

Everything is this test's own: database, Celery queue, Redis key namespace; all are removed at the
end, and every process it started is stopped. MLflow stays the embedded SQLite store here (its
server is covered by `test_mlflow_server.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pandas as pd
import pytest

from ml_platform.names import landing_sensor_name
from ml_platform.production import delete_celery_queue, start_celery_workers
from ml_platform.resources.feature_store import open_feature_store
from ml_platform.specs import load_spec
from ml_platform_tests.conftest import REPO_ROOT, generate, registry_for, wait_for
from ml_platform_tests.e2e.test_daemon import (
    HISTORY_DAYS,
    SEED,
    STORES,
    DaemonProcess,
    Stack,
    _train_by_hand,
    e2e_spec_dir,
)
from ml_platform_tests.production.conftest import unique
from ml_platform_tests.serving.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(1500)]
REDIS = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def serving(root, log):
    """`ml-platform serve` as a user starts it, one worker (uvicorn's supervisor restarted a
    second worker that was slow to import on a loaded 2-core machine); stopped at the end."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "ml-platform"), "serve", "--port", str(port)]
    command += ["--workers", "1"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 300, "the server to become ready")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_a_landing_file_is_served_from_redis_after_daemon_and_celery_runs(
    postgres_project, spec, monkeypatch, tmp_path
):
    root = postgres_project
    spec_dir = e2e_spec_dir(tmp_path / "specs")
    e2e = load_spec(spec_dir / "sales_forecast.yaml", root)
    queue, namespace = unique("mlp_e2e"), unique("mlp_e2e")
    store_url = f"{REDIS}?namespace={namespace}"
    monkeypatch.setenv("ML_PLATFORM_SPEC_DIR", str(spec_dir))
    monkeypatch.setenv("ML_PLATFORM_ONLINE_STORE_URL", store_url)
    monkeypatch.delenv("ML_PLATFORM_ALERT_WEBHOOK", raising=False)

    generate(root, e2e, stores=STORES, days=HISTORY_DAYS, seed=SEED)
    _train_by_hand(root, spec_dir, e2e)  # history, champion, predictions: in process, on PG
    champion = registry_for(root).alias_version(e2e.name, "champion")
    assert champion is not None

    monkeypatch.setenv("ML_PLATFORM_EXECUTOR", "celery")
    monkeypatch.setenv("ML_PLATFORM_CELERY_QUEUE", queue)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers, daemon, instance = [], DaemonProcess(root, env, logs), dg.DagsterInstance.get()
    try:
        workers = start_celery_workers(2, queue, tmp_path / "celery")
        stack = Stack(root, e2e, daemon, instance)
        daemon.start()
        sensor = landing_sensor_name(e2e)
        wait_for(
            lambda: (
                (s := stack.sensor_state(sensor)) and s.instigator_data and s.instigator_data.cursor
            ),
            240,
            f"the first tick of {sensor}",
        )
        assert stack.ingest_runs() == []  # the history is already in `raw`, same md5

        (path,) = generate(root, e2e, stores=STORES, days=1, seed=SEED)
        day = path.stem
        runs = wait_for(lambda: stack.runs_covering(day), 120, f"an ingest run for {day}")
        assert len(runs) == 1
        run = stack.wait_finished(runs[0].run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS, daemon.logs()

        # Its steps ran on the Celery workers, as each worker reported to the instance.
        hosts = {
            record.dagster_event.engine_event_data.metadata["Celery worker"].value
            for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if "Celery worker" in record.dagster_event.engine_event_data.metadata
        }
        assert hosts and all(queue in host for host in hosts), hosts  # this test's workers
        worker_logs = "".join(w.log.read_text(errors="replace") for w in workers)
        assert f"{e2e.name}__predictions" in worker_logs

        batch = pd.read_parquet(root / "data" / e2e.name / "predictions" / f"{day}.parquet")
        entities = batch[e2e.entity_keys].astype(str).to_dict("records")
        store = open_feature_store(store_url)
        try:
            stored = store.get(e2e.name, ["|".join(e.values()) for e in entities])
        finally:
            store.close()
        assert all(row is not None for row in stored)
        assert {str(json.loads(row)[e2e.timestamp])[:10] for row in stored} == {day}

        with serving(root, logs / "serve.log") as url:
            response = httpx.post(
                f"{url}/v1/{e2e.name}/predict", json={"entities": entities}, timeout=60
            )
        assert response.status_code == 200, response.text
        online = pd.DataFrame(response.json()["predictions"])
        assert set(online["feature_day"]) == {day}
        merged = batch.merge(online, on=e2e.entity_keys, suffixes=("_batch", "_online"))
        assert len(merged) == len(batch) > 0
        assert (merged["prediction_batch"] == merged["prediction_online"]).all()
        assert set(merged["model_version_online"].astype(str)) == {str(champion.version)}
    finally:
        daemon.stop()
        for worker in workers:
            worker.stop()
        instance.dispose()
        delete_celery_queue(queue)
        cleanup = open_feature_store(store_url)
        try:
            cleanup.clear(e2e.name)
        finally:
            cleanup.close()
