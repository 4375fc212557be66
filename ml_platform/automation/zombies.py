"""Runs whose process died (`kill -9`, the OOM killer, a reboot) are marked failed, with an alert.

Dagster's own run monitoring (on in `dagster.yaml`) fails runs that never start or never finish
cancelling, and asks the run launcher whether a started run's worker is alive. The default run
launcher cannot answer that, and a CLI run (`execute_in_process`) has no launcher at all, so a
killed run stayed STARTED forever; the queue's one-run-per-pipeline limit then kept every later
run of that pipeline waiting behind it.

Every run records the process that orchestrates it: Dagster's engine event "Started process for
run (pid: N)" (daemon runs) or "Executing steps in process (pid: N)", and CLI runs also carry
the tags below (`cli_run_tags`), written before the run starts. A STARTED run whose process is
gone from this host, or whose pid now belongs to a process that started after the run recorded
it (a reused pid), is failed with `report_run_failed`; its alert goes through the same sink and
webhook as any failed run, deduplicated by run id. The check runs at the start of every CLI run
and in each code location's `…_dead_run_monitor` sensor (every 30 s), so a dead run is failed
within a minute once the daemon is up.

A pid means something only on the host that recorded it: CLI runs name their host; a daemon run
without a host tag is checked only when the run storage is SQLite (one machine by construction).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ml_platform.automation.alerts import deliver_alert, run_failure_alert

PID_TAG = "ml_platform/pid"
HOST_TAG = "ml_platform/host"
PID_SINCE_TAG = "ml_platform/pid_since"  # when the pid was recorded (epoch seconds)
DEAD_RUN_SENSOR_SUFFIX = "dead_run_monitor"
CLOCK_SLACK_SECONDS = 2.0  # process create times are rounded to clock ticks


@dataclass(frozen=True)
class RunWorker:
    """The process orchestrating a run, as the run recorded it."""

    pid: int
    host: str | None  # None: not recorded (a daemon run)
    since: float  # the process existed at this time


def cli_run_tags() -> dict[str, str]:
    """Tags for a run this process orchestrates itself (the CLI's `execute_in_process`)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), PID_SINCE_TAG: _now()}


def _now() -> str:
    return f"{time.time():.3f}"


def process_alive(pid: int, since: float) -> bool:
    """True while `pid` is the process that existed at `since` (not a zombie, not a reuse)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= since + CLOCK_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: alive, and not ours to judge
        return True


def run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> RunWorker | None:
    """The run's recorded process: its tags (CLI runs), else its first engine event with a pid."""
    tags = run.tags
    if PID_TAG in tags:
        try:
            return RunWorker(int(tags[PID_TAG]), tags.get(HOST_TAG), float(tags[PID_SINCE_TAG]))
        except (KeyError, ValueError):
            return None
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event else None
        pid = data.metadata.get("pid") if data and data.metadata else None
        if pid is not None:
            try:
                return RunWorker(int(pid.value), tags.get(HOST_TAG), record.timestamp)
            except ValueError:
                return None
    return None


def _local_storage(instance: dg.DagsterInstance) -> bool:
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def _in_scope(run: dg.DagsterRun, location: str | None, job_names: Collection[str]) -> bool:
    """A per-pipeline location looks after its own runs; the all-pipelines one after every run."""
    if location is None:
        return True
    origin = run.remote_job_origin
    if origin is not None and origin.location_name == location:
        return True
    return run.job_name in job_names or run.tags.get("ml_platform/pipeline") == location


def fail_dead_runs(
    instance: dg.DagsterInstance,
    root: Path,
    log: logging.Logger,
    location: str | None = None,
    job_names: Collection[str] = (),
) -> list[str]:
    """Mark every STARTED run whose process is gone as failed and alert; returns their ids."""
    host, local = socket.gethostname(), _local_storage(instance)
    failed = []
    started = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    for run in started:
        if not _in_scope(run, location, job_names):
            continue
        worker = run_worker(instance, run)
        if worker is None or (worker.host or (host if local else None)) != host:
            continue
        if process_alive(worker.pid, worker.since):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # it finished while we looked
        message = (
            f"the process running this run (pid {worker.pid} on {host}) died without finishing "
            "it (killed, out of memory or a reboot); marked failed by ml-platform. Re-run it."
        )
        instance.report_run_failed(current, message)
        alert = run_failure_alert(
            job_name=run.job_name,
            run_id=run.run_id,
            step_failures=[],
            run_failure_message=message,
            timestamp=time.time(),
        )
        deliver_alert(alert, root, log)
        log.warning(f"run {run.run_id} ({run.job_name}): {message}")
        failed.append(run.run_id)
    return failed


def build_dead_run_sensor(
    name: str, location: str | None, job_names: Collection[str], interval_seconds: int = 30
) -> dg.SensorDefinition:
    """Every `interval_seconds`, fail the location's runs whose process died (see the module)."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Mark runs whose process died (kill -9, out of memory) as failed and alert, so none "
            "stays STARTED and blocks the pipeline's queue."
        ),
    )
    def dead_run_monitor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        from ml_platform.resources.platform import default_root

        failed = fail_dead_runs(context.instance, default_root(), context.log, location, job_names)
        return dg.SkipReason(f"marked {len(failed)} dead runs failed" if failed else "none dead")

    return dead_run_monitor
