"""`make demo-distributed`'s code path (`python -m ml_platform.production demo --workers 2`) on
small data: the same summary and the same bytes as the embedded demo, and nothing left running.

The embedded side is the suite's shared `trained_platform` (built by `run_demo`); the distributed
side runs on a copy of its landing files with its own databases, Celery queue and Redis namespace,
all removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from ml_platform.production import delete_celery_queue, drop_database
from ml_platform.resources.feature_store import entity_id, open_feature_store
from ml_platform_tests.conftest import activated, make_platform_root
from ml_platform_tests.production.conftest import unique

# 26 min at load 20 on 2 cores, about 5 min on a quiet machine
pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(2700)]
SUMMARY_LINES = ("  champion:", "  last decision:", "  holdout MAE:", "  rows quarantined:")


def md5s(root: Path, pipeline: str) -> dict[str, str]:
    folder = root / "data" / pipeline
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def summary(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.startswith(SUMMARY_LINES)]


def embedded_summary(root: Path, spec) -> str:
    from ml_platform.demo import _print_summary

    with activated(root):
        instance = dg.DagsterInstance.get()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                _print_summary(root, spec, instance)
        finally:
            instance.dispose()
    return out.getvalue()


def our_processes(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if marker in line and "ps -eo" not in line]


def test_demo_distributed_equals_the_embedded_demo_and_stops_what_it_started(
    trained_platform, spec, tmp_path
):
    root = make_platform_root(tmp_path / "distributed")
    landing = spec.landing.directory
    shutil.copytree(trained_platform / landing, root / landing)
    dagster_db, mlflow_db = unique("mlp_demo"), unique("mlp_demo_mlflow")
    queue, namespace = unique("mlp_demo"), unique("mlp_demo")
    store_url = f"redis://127.0.0.1:6379/0?namespace={namespace}"
    env = {
        **os.environ,
        "ML_PLATFORM_ROOT": str(root),
        "DAGSTER_PG_DB": dagster_db,
        "ML_PLATFORM_MLFLOW_DB": mlflow_db,
        "ML_PLATFORM_CELERY_QUEUE": queue,
        "ML_PLATFORM_ONLINE_STORE_URL": store_url,
        "ML_PLATFORM_MAX_PARTITIONS_PER_RUN": "50",  # 160 days: several runs per wave
    }
    for key in ("MLFLOW_TRACKING_URI", "DAGSTER_HOME", "ML_PLATFORM_EXECUTOR"):
        env.pop(key, None)
    command = [sys.executable, "-m", "ml_platform.production", "demo", "--workers", "2"]
    command += ["--pipeline", spec.name]
    try:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            stdout, stderr = process.communicate(timeout=2400)
        finally:
            if process.poll() is None:  # a timeout: SIGTERM lets it stop what it started
                process.terminate()
                process.communicate(timeout=120)
        done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert our_processes(str(root)) == []  # MLflow server, workers: all stopped
        distributed = summary(done.stdout)
        assert len(distributed) == len(SUMMARY_LINES), done.stdout[-3000:]
        assert distributed == summary(embedded_summary(trained_platform, spec))
        expected = md5s(trained_platform, spec.name)
        assert expected and md5s(root, spec.name) == expected
        logs = root / ".ml_platform" / "production" / "logs"
        worker_logs = [p.read_text(errors="replace") for p in logs.glob("worker-*.log")]
        assert len(worker_logs) == 2 and all("succeeded in" in log for log in worker_logs)
        last = max((root / "data" / spec.name / "features").glob("*.parquet"))
        ids = [entity_id(spec, row) for row in pd.read_parquet(last).to_dict("records")]
        store = open_feature_store(store_url)
        try:
            assert ids and all(v is not None for v in store.get(spec.name, ids))  # online rows
        finally:
            store.close()
    finally:
        for database in (dagster_db, mlflow_db):
            drop_database(database)
        delete_celery_queue(queue)
        cleanup = open_feature_store(store_url)
        try:
            cleanup.clear(spec.name)
        finally:
            cleanup.close()
