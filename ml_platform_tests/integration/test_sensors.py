"""Sensors against a real Dagster instance in a temp DAGSTER_HOME, with real landing files.

Ticks are evaluated with `build_sensor_context`, and the crash-recovery tests drive the sensor
daemon's own tick loop (`execute_sensor_iteration`) with Dagster's debug crash points, killing the
ticking process with SIGKILL at each step of a tick.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from ml_platform.automation.alerts import alerts_path
from ml_platform.automation.sensors import (
    MAX_RANGES_PER_TICK,
    LandingCursor,
    build_automation,
    build_failure_sensor,
    drift_report_key,
)
from ml_platform.core.json_lines import read_json_lines
from ml_platform.core.storage import md5_file
from ml_platform.instance import ensure_dagster_home
from ml_platform.names import (
    FAILURE_SENSOR_NAME,
    RANGE_END,
    RANGE_START,
    TRIGGER_TAG,
    drift_sensor_name,
    ingest_job_name,
    landing_sensor_name,
    retrain_schedule_name,
    training_job_name,
)
from ml_platform.resources.platform import PlatformPaths
from ml_platform.specs import SPEC_DIR, PipelineSpec
from ml_platform_tests.conftest import day, generate, run_job

HEADER = "date,store_id,product_id,units_sold,price,promo\n"


@pytest.fixture
def env(isolated_env: Path) -> Path:
    ensure_dagster_home(isolated_env)
    return isolated_env


@pytest.fixture
def instance(env: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.get()


def sensors(spec: PipelineSpec) -> tuple[dg.SensorDefinition, dg.SensorDefinition]:
    (landing, drift), _ = build_automation(spec)
    return landing, drift


def definitions_with(root: Path, *sensor_defs: dg.SensorDefinition) -> dg.Definitions:
    """The code location's definitions plus these sensors, unless it already has them by name
    (it does once `build_definitions` wires `build_automation` in)."""
    from ml_platform.assemble import build_definitions

    defs = build_definitions(root)
    have = {s.name for s in defs.sensors or []}
    extra = [s for s in sensor_defs if s.name not in have]
    return dg.Definitions.merge(defs, dg.Definitions(sensors=extra)) if extra else defs


def tick(sensor, instance, root: Path | None = None, cursor: str | None = None):
    """One evaluation, with the definitions a daemon would have (partitioned requests need them)."""
    root = root or Path.cwd()
    defs = definitions_with(root, sensor)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"paths": PlatformPaths(root=str(root))},
        definitions=defs,
    )
    return sensor.evaluate_tick(context)


def partitions(request: dg.RunRequest) -> list[str]:
    if request.partition_key:
        return [request.partition_key]
    first = datetime.fromisoformat(request.tags[RANGE_START]).date()
    last = datetime.fromisoformat(request.tags[RANGE_END]).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def landing_dir(root: Path, spec: PipelineSpec) -> Path:
    path = root / spec.landing.directory
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_day(root: Path, spec: PipelineSpec, offset: int, units: int = 3) -> Path:
    key = day(offset, spec)
    path = landing_dir(root, spec) / f"{key}.csv"
    path.write_text(HEADER + f"{key},S0001,P01,{units},2.50,0\n")
    return path


# --- landing sensor -----------------------------------------------------------------------------


def test_a_backfill_drop_is_one_range_run_and_is_not_requested_again(env, instance, spec):
    files = generate(env, spec, stores=2, days=60)
    landing, _ = sensors(spec)

    first = tick(landing, instance, env)

    (request,) = first.run_requests
    assert partitions(request) == [p.stem for p in files]
    assert request.run_key.startswith(f"landing:{files[0].stem}..{files[-1].stem}:")
    assert request.tags[TRIGGER_TAG] == "landing"
    assert LandingCursor.parse(first.cursor).processed == {p.name: md5_file(p) for p in files}
    again = tick(landing, instance, env, first.cursor)
    assert again.run_requests == [] and again.cursor == first.cursor


def test_a_tick_reevaluated_from_its_old_cursor_asks_for_the_same_run_keys(env, instance, spec):
    """What a daemon killed mid-evaluation does next: Dagster then dedupes on the run key."""
    generate(env, spec, stores=2, days=5)
    landing, _ = sensors(spec)
    first = tick(landing, instance, env)
    write_day(env, spec, 9)  # non-contiguous: its own range
    replay = tick(landing, instance, env)
    keys = [r.run_key for r in replay.run_requests]
    assert keys[0] == first.run_requests[0].run_key
    assert len(keys) == 2 and partitions(replay.run_requests[1]) == [day(9, spec)]


def test_changed_content_runs_again_and_a_revert_gets_a_fresh_run_key(env, instance, spec):
    landing, _ = sensors(spec)
    path = write_day(env, spec, 0, units=3)
    a = tick(landing, instance, env)
    path.write_text(HEADER + f"{path.stem},S0001,P01,4,2.50,0\n")
    b = tick(landing, instance, env, a.cursor)
    duplicate = tick(landing, instance, env, b.cursor)
    path.write_text(HEADER + f"{path.stem},S0001,P01,3,2.50,0\n")  # back to content A
    a_again = tick(landing, instance, env, duplicate.cursor)

    keys = [t.run_requests[0].run_key for t in (a, b, a_again)]
    assert duplicate.run_requests == []
    assert len(set(keys)) == 3  # A's key again would be skipped by Dagster as already used
    assert LandingCursor.parse(a_again.cursor).revisions == {path.name: 2}


def test_bad_names_are_skipped_with_one_alert_each_and_never_crash_the_tick(env, instance, spec):
    folder = landing_dir(env, spec)
    good = write_day(env, spec, 0)
    (folder / "notes.txt").write_text("not data")
    (folder / "2024-13-45.csv").write_text(HEADER)
    (folder / "20240102.csv").write_text(HEADER)
    before_start = folder / f"{spec.landing.start_date - timedelta(days=1)}.csv"
    before_start.write_text(HEADER)
    (folder / f".{good.name}.abc.tmp").write_text("half written")  # generator temp file
    (folder / "archive").mkdir()
    landing, _ = sensors(spec)

    first = tick(landing, instance, env)
    second = tick(landing, instance, env, first.cursor)

    assert [partitions(r) for r in first.run_requests] == [[good.stem]]
    alerts = read_json_lines(alerts_path(env))
    assert sorted(a["reason"].split("'")[1] for a in alerts) == sorted(
        ["notes.txt", "2024-13-45.csv", "20240102.csv", before_start.name]
    )
    assert all(a["pipeline"] == spec.name and a["run_id"] is None for a in alerts)
    assert "before the pipeline's start_date" in " ".join(a["reason"] for a in alerts)
    assert second.run_requests == [] and len(read_json_lines(alerts_path(env))) == 4
    (folder / "notes.txt").write_text("changed")  # a new version of a bad file alerts again
    tick(landing, instance, env, second.cursor)
    assert len(read_json_lines(alerts_path(env))) == 5


def test_links_fifos_and_non_calendar_names_are_skipped_with_an_alert_never_read(
    env, instance, spec
):
    folder = landing_dir(env, spec)
    good = write_day(env, spec, 0)
    outside = env / "outside.csv"
    outside.write_text(HEADER + f"{day(1, spec)},S0001,P01,3,2.50,0\n")
    linked_csv, linked_passwd, fifo = (f"{day(i, spec)}.csv" for i in (1, 2, 3))
    (folder / linked_csv).symlink_to(outside)
    (folder / linked_passwd).symlink_to("/etc/passwd")
    os.mkfifo(folder / fifo)  # reading it would block the tick forever
    week_date = "2024-W02-2.csv"  # date.fromisoformat reads 2024-01-09; not a landing name
    (folder / week_date).write_text(HEADER + "2024-01-09,S0001,P01,3,2.50,0\n")
    full_width = "２０２４-01-10.csv"
    (folder / full_width).write_text(HEADER + "2024-01-10,S0001,P01,3,2.50,0\n")
    landing, _ = sensors(spec)

    first = tick(landing, instance, env)
    second = tick(landing, instance, env, first.cursor)

    assert [partitions(r) for r in first.run_requests] == [[good.stem]]
    assert second.run_requests == []
    alerts = {a["reason"].split("'")[1]: a["reason"] for a in read_json_lines(alerts_path(env))}
    assert sorted(alerts) == sorted([linked_csv, linked_passwd, fifo, week_date, full_width])
    assert "symbolic link" in alerts[linked_csv] and "symbolic link" in alerts[linked_passwd]
    assert "not a regular file" in alerts[fifo]
    assert "not YYYY-MM-DD.csv" in alerts[week_date] and "not YYYY-MM-DD.csv" in alerts[full_width]
    assert "root:" not in " ".join(alerts.values())


def test_runs_per_tick_are_bounded_and_the_rest_waits_for_the_next_tick(env, instance, spec):
    every_other_day = [write_day(env, spec, 2 * i) for i in range(MAX_RANGES_PER_TICK + 2)]
    landing, _ = sensors(spec)
    first = tick(landing, instance, env)
    second = tick(landing, instance, env, first.cursor)
    assert len(first.run_requests) == MAX_RANGES_PER_TICK
    assert len(second.run_requests) == 2
    requested = [p for t in (first, second) for r in t.run_requests for p in partitions(r)]
    assert requested == [p.stem for p in every_other_day]


def test_a_day_whose_partition_is_not_open_yet_waits_without_alert(env, instance, spec):
    today = datetime.now(UTC).date().isoformat()
    path = landing_dir(env, spec) / f"{today}.csv"
    path.write_text(HEADER + f"{today},S0001,P01,3,2.50,0\n")
    landing, _ = sensors(spec)
    result = tick(landing, instance, env)
    assert result.run_requests == []
    assert path.name not in LandingCursor.parse(result.cursor).processed  # picked up later
    assert read_json_lines(alerts_path(env)) == []


def test_files_that_raw_already_holds_with_that_md5_are_not_ingested_again(env, instance, spec):
    """`ml-platform demo` ingests by hand; turning the sensor on afterwards re-runs nothing."""
    [ingested, changed] = generate(env, spec, stores=2, days=2)
    for path in (ingested, changed):
        raw = [dg.AssetKey([spec.name, "raw"])]
        assert run_job(env, ingest_job_name(spec), path.stem, raw).success
    changed.write_text(HEADER + f"{changed.stem},S0001,P01,1,2.50,0\n")
    landing, _ = sensors(spec)

    result = tick(landing, instance, env)

    assert [partitions(r) for r in result.run_requests] == [[changed.stem]]
    assert LandingCursor.parse(result.cursor).processed[ingested.name] == md5_file(ingested)


# --- drift sensor -------------------------------------------------------------------------------


def report(instance, spec, partition: str, drift: bool, concept: bool = False) -> int:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=drift_report_key(spec),
            partition=partition,
            metadata={"dataset_drift": drift, "concept_drift": concept, "drift_share": 0.6},
        )
    )
    return instance.fetch_materializations(drift_report_key(spec), limit=1).records[0].storage_id


def test_drift_sensor_starts_after_the_reports_that_already_exist(instance, spec):
    old = report(instance, spec, day(1, spec), drift=True)
    _, drift = sensors(spec)
    first = tick(drift, instance)
    assert first.run_requests == [] and first.cursor == str(old)


def test_each_drifting_report_tick_requests_one_retrain_keyed_on_the_report(instance, spec):
    _, drift = sensors(spec)
    start = tick(drift, instance)
    report(instance, spec, day(1, spec), drift=False)
    quiet = tick(drift, instance, cursor=start.cursor)
    assert quiet.run_requests == []
    first = report(instance, spec, day(2, spec), drift=True)
    newest = report(instance, spec, day(3, spec), drift=False, concept=True)

    result = tick(drift, instance, cursor=quiet.cursor)

    (request,) = result.run_requests  # two drifting reports in one tick: one retrain
    assert first < newest
    assert request.run_key == f"drift_report:{newest}"
    assert request.tags[TRIGGER_TAG] == "drift"
    assert result.cursor == str(newest)
    replay = tick(drift, instance, cursor=quiet.cursor)  # same cursor, same key: Dagster dedupes
    assert [r.run_key for r in replay.run_requests] == [request.run_key]


def test_a_recent_drift_retrain_puts_the_next_report_in_cooldown(instance, spec):
    _, drift = sensors(spec)
    start = tick(drift, instance)
    create_run_for_test(instance, job_name=training_job_name(spec), tags={TRIGGER_TAG: "drift"})
    report(instance, spec, day(4, spec), drift=True)

    blocked = tick(drift, instance, cursor=start.cursor)
    no_cooldown = spec.model_copy(
        update={"drift": spec.drift.model_copy(update={"cooldown_hours": 0})}
    )
    _, eager = sensors(no_cooldown)
    allowed = tick(eager, instance, cursor=start.cursor)

    assert blocked.run_requests == [] and "cooldown" in blocked.skip_message
    assert len(allowed.run_requests) == 1


# --- schedule and wiring -----------------------------------------------------------------------


def test_retrain_schedule_is_off_unless_the_spec_enables_it(spec):
    (_, (schedule,)) = build_automation(spec)
    assert schedule.name == retrain_schedule_name(spec)
    assert schedule.cron_schedule == spec.automation.retrain_cron
    assert schedule.job_name == training_job_name(spec)
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    on = spec.model_copy(
        update={"automation": spec.automation.model_copy(update={"retrain_schedule_enabled": True})}
    )
    assert build_automation(on)[1][0].default_status == dg.DefaultScheduleStatus.RUNNING


def test_automation_wires_into_the_definitions_with_running_sensors(env, spec):
    sensor_defs, schedules = build_automation(spec)
    defs = definitions_with(env, *sensor_defs, build_failure_sensor())
    if not defs.schedules:
        defs = dg.Definitions.merge(defs, dg.Definitions(schedules=schedules))
    repo = defs.get_repository_def()  # resolves every job name the sensors target
    landing = repo.get_sensor_def(landing_sensor_name(spec))
    assert landing.job_name == ingest_job_name(spec)
    assert landing.minimum_interval_seconds == spec.automation.landing_sensor_interval_seconds
    assert repo.get_sensor_def(drift_sensor_name(spec)).job_name == training_job_name(spec)
    assert repo.get_schedule_def(retrain_schedule_name(spec)).job_name == training_job_name(spec)
    for name in (landing_sensor_name(spec), drift_sensor_name(spec), FAILURE_SENSOR_NAME):
        assert repo.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING


# --- run-failure sensor -------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:
        _Hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.bodies.clear()
    monkeypatch.setenv("ML_PLATFORM_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/")
    yield _Hook.bodies
    server.shutdown()
    server.server_close()


def test_a_failed_run_is_one_alert_line_and_one_post_even_if_redelivered(
    env, instance, spec, webhook
):
    sensor = build_failure_sensor()
    defs = definitions_with(env, sensor)
    context = {"instance": instance, "definitions": defs}
    start = sensor.evaluate_tick(dg.build_sensor_context(**context))  # starts after "now"
    key = day(3, spec)
    (landing_dir(env, spec) / f"{key}.csv").write_text(
        f"date,store_id,product_id,units,price,promo\n{key},S0001,P01,3,2.50,0\n"
    )
    result = run_job(env, ingest_job_name(spec), key)
    assert not result.success

    sensor.evaluate_tick(dg.build_sensor_context(cursor=start.cursor, **context))
    # the daemon died before saving the cursor: the same failure is delivered again
    sensor.evaluate_tick(dg.build_sensor_context(cursor=start.cursor, **context))

    (alert,) = read_json_lines(alerts_path(env))
    assert alert["run_id"] == result.run_id
    assert alert["asset"] == f"{spec.name}/validated"
    assert alert["reason"].startswith(f"{spec.name}__validated: data contract broken")
    assert "missing required columns ['units_sold']" in alert["reason"]
    assert webhook == [alert]


def test_an_unreachable_webhook_is_logged_and_the_alert_still_written(
    env, instance, spec, monkeypatch, capfd
):
    monkeypatch.setenv("ML_PLATFORM_ALERT_WEBHOOK", "http://127.0.0.1:9/")
    sensor = build_failure_sensor()
    defs = definitions_with(env, sensor)
    start = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
    key = day(4, spec)
    (landing_dir(env, spec) / f"{key}.csv").write_text("")
    assert not run_job(env, ingest_job_name(spec), key).success

    capfd.readouterr()
    sensor.evaluate_tick(
        dg.build_sensor_context(instance=instance, definitions=defs, cursor=start.cursor)
    )

    (alert,) = read_json_lines(alerts_path(env))
    assert alert["asset"] == f"{spec.name}/raw" and "empty" in alert["reason"]
    assert "alert webhook ML_PLATFORM_ALERT_WEBHOOK failed" in capfd.readouterr().err


# --- the daemon's own tick loop, killed at each step of a tick ----------------------------------

CRASH_POINTS = ["TICK_HELD", "RUN_IDS_RESERVED", "RUN_CREATED", "RUN_LAUNCHED"]
DEFS_FILE = """
from pathlib import Path

import dagster as dg
from ml_platform.automation.sensors import build_automation
from ml_platform.assemble import build_definitions
from ml_platform.specs import load_spec

root, spec_dir = Path({root!r}), Path({spec_dir!r})
base = build_definitions(root, spec_dir)
have = {{s.name for s in base.sensors or []}}
spec = load_spec(spec_dir / "sales_forecast.yaml", root)
extra = [s for s in build_automation(spec)[0] if s.name not in have]
defs = dg.Definitions.merge(base, dg.Definitions(sensors=extra)) if extra else base
"""


def _sensor_iteration(defs_file: str, crash_at: str | None, sensor_name: str) -> None:
    """One pass of the sensor daemon's loop, as `dagster-daemon run` does it."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=defs_file, attribute="defs"), location_name="test"
    )
    flags = {sensor_name: {crash_at: signal.SIGKILL}} if crash_at else None
    instance = dg.DagsterInstance.get()
    target = InProcessWorkspaceLoadTarget(origin)
    with create_test_daemon_workspace_context(target, instance) as workspace:
        list(
            execute_sensor_iteration(
                workspace,
                logging.getLogger("sensor-test"),
                threadpool_executor=None,
                submit_threadpool_executor=None,
                debug_crash_flags=flags,
            )
        )


def _iterate_after_interval(defs_file: str, name: str) -> None:
    time.sleep(1.1)  # spacing for the sensor's 1 s minimum interval, not an assertion
    _sensor_iteration(defs_file, None, name)


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_at_any_step_of_a_tick_neither_loses_nor_repeats_a_file(
    env, instance, spec, crash_at, tmp_path
):
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    raw = yaml.safe_load((SPEC_DIR / "sales_forecast.yaml").read_text())
    raw["automation"].update(landing_sensor_interval_seconds=1, drift_sensor_interval_seconds=1)
    (spec_dir / "sales_forecast.yaml").write_text(yaml.safe_dump(raw))
    defs_file = tmp_path / "defs.py"
    defs_file.write_text(DEFS_FILE.format(root=str(env), spec_dir=str(spec_dir)))
    name = landing_sensor_name(spec)
    files = generate(env, spec, stores=2, days=3)

    child = multiprocessing.get_context("fork").Process(
        target=_sensor_iteration, args=(str(defs_file), crash_at, name)
    )
    child.start()
    child.join(timeout=240)
    assert child.exitcode == -signal.SIGKILL, f"the tick was not killed at {crash_at}"

    files += generate(env, spec, stores=2, days=1)  # arrives while the daemon is down
    for _ in range(3):  # resume the interrupted tick, then evaluate afresh, then once more
        _iterate_after_interval(str(defs_file), name)

    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": name}))
    covered = sorted(p for run in runs for p in _run_partitions(run))
    assert covered == sorted(p.stem for p in files), crash_at
    assert len({run.tags["dagster/run_key"] for run in runs}) == len(runs)


def _run_partitions(run: dg.DagsterRun) -> list[str]:
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    request = dg.RunRequest(tags={k: run.tags[k] for k in (RANGE_START, RANGE_END)})
    return partitions(request)


def test_failure_sensor_is_one_per_code_location_and_runs_by_default():
    sensor = build_failure_sensor()
    assert sensor.name == FAILURE_SENSOR_NAME
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
