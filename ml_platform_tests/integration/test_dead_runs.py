"""Runs whose process died are failed with an alert (`automation/zombies.py`), never left STARTED.

The unit-sized tests build runs in a real SQLite Dagster instance whose recorded process is dead,
alive, or a reused pid; the slow one `kill -9`s a real `ml-platform materialize` mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData

from ml_platform.automation.alerts import alerts_path
from ml_platform.automation.zombies import (
    HOST_TAG,
    PID_SINCE_TAG,
    PID_TAG,
    build_dead_run_sensor,
    cli_run_tags,
    fail_dead_runs,
)
from ml_platform_tests.conftest import generate, wait_for


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str], job: str = "demo_ingest"):
    run = instance.add_run(
        dg.DagsterRun(job_name=job, status=dg.DagsterRunStatus.STARTED, tags=tags)
    )
    return run


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        yield instance


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_a_cli_run_whose_process_died_is_failed_once_with_one_alert(instance, tmp_path: Path):
    import logging

    dead = _started_run(instance, {**cli_run_tags(), PID_TAG: str(_dead_pid())})
    alive = _started_run(instance, cli_run_tags())  # this very process
    reused = _started_run(  # our pid, but recorded long before this process started
        instance, {**cli_run_tags(), PID_SINCE_TAG: f"{time.time() - 10**6:.3f}"}
    )
    elsewhere = _started_run(
        instance, {**cli_run_tags(), PID_TAG: str(_dead_pid()), HOST_TAG: "another-host"}
    )
    log = logging.getLogger("test")
    assert sorted(fail_dead_runs(instance, tmp_path, log)) == sorted([dead.run_id, reused.run_id])
    assert _status(instance, dead.run_id) == dg.DagsterRunStatus.FAILURE
    assert _status(instance, reused.run_id) == dg.DagsterRunStatus.FAILURE
    assert _status(instance, alive.run_id) == dg.DagsterRunStatus.STARTED
    assert _status(instance, elsewhere.run_id) == dg.DagsterRunStatus.STARTED
    alerts = [json.loads(line) for line in alerts_path(tmp_path).read_text().splitlines()]
    assert {a["run_id"] for a in alerts} == {dead.run_id, reused.run_id}
    assert all("died" in a["reason"] and a["pipeline"] == "demo" for a in alerts)
    failure = instance.get_records_for_run(
        dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    assert len(failure) == 1 and "died" in failure[0].event_log_entry.dagster_event.message
    # A second pass (the sensor's next tick, another CLI run) finds nothing more to do.
    assert fail_dead_runs(instance, tmp_path, log) == []
    assert len(alerts_path(tmp_path).read_text().splitlines()) == 2


def test_the_sensor_fails_a_daemon_run_from_its_engine_event_pid(
    instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ML_PLATFORM_ROOT", str(tmp_path))
    mine = _started_run(instance, {"ml_platform/pipeline": "demo"})  # worker: pid 1, alive
    instance.report_engine_event("Started process for run", mine, EngineEventData.in_process(1))
    other = _started_run(instance, {"ml_platform/pipeline": "other"}, job="other_ingest")
    instance.report_engine_event(
        "Started process for run", other, EngineEventData.in_process(_dead_pid())
    )
    sensor = build_dead_run_sensor("demo_dead_run_monitor", "demo", {"demo_ingest"})
    result = sensor(dg.build_sensor_context(instance=instance))
    assert "none dead" in str(result.skip_message)  # pid 1 is alive; `other` is not this scope
    assert _status(instance, mine.run_id) == dg.DagsterRunStatus.STARTED
    all_locations = build_dead_run_sensor("ml_platform_dead_run_monitor", None, ())
    result = all_locations(dg.build_sensor_context(instance=instance))
    assert "marked 1" in str(result.skip_message)
    assert _status(instance, other.run_id) == dg.DagsterRunStatus.FAILURE
    assert [json.loads(x)["run_id"] for x in alerts_path(tmp_path).read_text().splitlines()] == [
        other.run_id
    ]


def _runs(home: Path) -> list[tuple[str, str]]:
    """(run_id, status) straight from runs.db, as an operator's `sqlite3` would read them."""
    db = home / "history" / "runs.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute("SELECT run_id, status FROM runs").fetchall()
    except sqlite3.OperationalError:  # created but not yet migrated by the first process
        return []


@pytest.mark.slow
def test_kill_9_of_a_cli_run_leaves_no_started_run_and_the_next_run_proceeds(isolated_env, spec):
    from ml_platform.demo import materialize

    root = isolated_env
    generate(root, spec, stores=3, days=40, seed=11)
    home = root / ".ml_platform" / "dagster_home"
    command = [
        str(Path(sys.executable).parent / "ml-platform"),
        "materialize",
        spec.name,
        "raw",
        "validated",
        "quarantine",
        "features",
    ]
    log = (root / "killed.log").open("w")
    process = subprocess.Popen(command, cwd=root, env=dict(os.environ), stdout=log, stderr=log)
    try:
        started = wait_for(
            lambda: [r for r, s in _runs(home) if s == "STARTED"] or process.poll() is not None,
            120,
            "the CLI run to start",
            poll=0.05,
        )
        assert isinstance(started, list), (root / "killed.log").read_text()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        log.close()
    (killed,) = started
    assert dict(_runs(home))[killed] == "STARTED"  # the zombie the issue found

    # The next CLI run fails the dead one first (alert written), then runs to the end.
    assert materialize(root, spec, ["raw", "validated", "quarantine", "features"])
    statuses = dict(_runs(home))
    assert statuses[killed] == "FAILURE"
    assert "STARTED" not in statuses.values()
    assert list(statuses.values()).count("SUCCESS") >= 1
    alerts = [json.loads(x) for x in alerts_path(root).read_text().splitlines()]
    (alert,) = [a for a in alerts if a["run_id"] == killed]
    assert alert["pipeline"] == spec.name and "died" in alert["reason"]
    # What the queue's one-run-per-pipeline limit counts: nothing in progress holds it.
    in_progress = dg.DagsterInstance.get().get_runs_count(
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={"ml_platform/pipeline": spec.name},
        )
    )
    assert in_progress == 0
