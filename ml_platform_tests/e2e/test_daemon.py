"""Automation under the real `dagster-daemon`: files land, runs happen exactly once, alerts appear.

The daemon, its code server and the run workers are real processes against a temporary
DAGSTER_HOME, project root and spec folder (short sensor intervals). The tests run in file order
and share one daemon; every wait polls the instance against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from ml_platform.automation.alerts import alerts_path
from ml_platform.core.json_lines import read_json_lines
from ml_platform.core.storage import atomic_write, md5_file
from ml_platform.names import (
    DRIFT_REPORT_TAG,
    FAILURE_SENSOR_NAME,
    RANGE_END,
    RANGE_START,
    drift_sensor_name,
    ingest_job_name,
    landing_sensor_name,
    training_job_name,
)
from ml_platform.specs import SPEC_DIR, PipelineSpec, load_spec
from ml_platform_tests.conftest import (
    REPO_ROOT,
    generate,
    make_platform_root,
    registry_for,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

# The module the daemon loads. Overridable so the suite can run against a stand-in module before
# definitions.py is wired; CI uses the default.
DEFS_MODULE = os.environ.get("ML_PLATFORM_E2E_DEFS_MODULE", "ml_platform.definitions")
SENSOR_INTERVAL_SECONDS = 5  # the daemon's sensor loop wakes every ~5 s anyway
HISTORY_DAYS = 120  # with 8 stores: enough holdout pairs (28 x 8) for a significant promotion
STORES, SEED = 8, 3
RUN_TIMEOUT = 300.0  # a run is a fresh process importing pandas, sklearn and mlflow: slow on CI
SENSOR_TAG = "dagster/sensor_name"
TERMINAL = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}


def e2e_spec_dir(target: Path, interval: int = SENSOR_INTERVAL_SECONDS, **drift) -> Path:
    """The repo's spec with short sensor intervals (and optional drift overrides)."""
    raw = yaml.safe_load((SPEC_DIR / "sales_forecast.yaml").read_text())
    raw["automation"].update(
        landing_sensor_interval_seconds=interval, drift_sensor_interval_seconds=interval
    )
    raw["drift"].update(drift)
    target.mkdir(parents=True, exist_ok=True)
    (target / "sales_forecast.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


class DaemonProcess:
    """`dagster-daemon run` in its own session, so it and its code server can be cleaned up."""

    def __init__(self, root: Path, env: dict[str, str], log_dir: Path) -> None:
        self.root, self.env, self.log_dir = root, env, log_dir
        self.workspace = log_dir / "workspace.yaml"
        self.workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "python_module": {
                                "module_name": DEFS_MODULE,
                                "location_name": "ml_platform",
                                "working_directory": str(root),
                            }
                        }
                    ]
                }
            )
        )
        self.process: subprocess.Popen | None = None
        self.sessions: list[int] = []
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"daemon-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(self.workspace)],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions.append(self.process.pid)

    def sigkill(self) -> None:
        """SIGKILL the daemon process only, as a crash would; its children are left as they are."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """End every process group this harness started (daemon, code servers, run workers)."""
        for session in self.sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.log_dir.glob("*.log"))


@dataclass
class Stack:
    root: Path
    spec: PipelineSpec
    daemon: DaemonProcess
    instance: dg.DagsterInstance

    @property
    def landing(self) -> Path:
        return self.root / self.spec.landing.directory

    def sensor_state(self, name: str):
        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        return next((s for s in states if s.instigator_name == name), None)

    def finished_ticks(self, name: str, after: float) -> int:
        state = self.sensor_state(name)
        if state is None:
            return 0
        ticks = self.instance.get_ticks(
            state.instigator_origin_id, state.selector_id, after=float(after)
        )
        return sum(1 for t in ticks if t.status != TickStatus.STARTED)

    def wait_ticks(self, name: str, after: float, count: int = 2) -> None:
        timeout = 60 + count * SENSOR_INTERVAL_SECONDS * 4
        wait_for(
            lambda: self.finished_ticks(name, after) >= count, timeout, f"{count} ticks of {name}"
        )

    def ingest_runs(self) -> list[dg.DagsterRun]:
        runs = self.instance.get_runs(
            filters=dg.RunsFilter(
                job_name=ingest_job_name(self.spec),
                tags={SENSOR_TAG: landing_sensor_name(self.spec)},
            )
        )
        return list(runs)

    def runs_covering(self, partition: str) -> list[dg.DagsterRun]:
        return [r for r in self.ingest_runs() if partition in run_partitions(r)]

    def wait_finished(self, run_id: str) -> dg.DagsterRun:
        def finished():
            run = self.instance.get_run_by_id(run_id)
            return run if run and run.status in TERMINAL else None

        try:
            return wait_for(finished, RUN_TIMEOUT, f"run {run_id} to finish", poll=1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon logs ---\n{self.daemon.logs()}") from exc

    def champion_version(self) -> str | None:
        version = registry_for(self.root).alias_version(self.spec.name, "champion")
        return version.version if version else None

    def raw_md5(self, partition: str) -> str | None:
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                dg.AssetKey([self.spec.name, "raw"]), asset_partitions=[partition]
            ),
            limit=1,
        ).records
        return records[0].asset_materialization.metadata["md5"].value if records else None


def run_partitions(run: dg.DagsterRun) -> list[str]:
    """Partition keys a run covers: its single partition or its range (daily keys)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return [tags["dagster/partition"]]
    if RANGE_START in tags:
        first, last = date.fromisoformat(tags[RANGE_START]), date.fromisoformat(tags[RANGE_END])
        return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    return []


def _day(spec: PipelineSpec, offset: int) -> str:
    return (spec.landing.start_date + timedelta(days=offset)).isoformat()


def _train_by_hand(root: Path, spec_dir: Path, spec: PipelineSpec) -> None:
    """Ingest the history, train and predict in process, as `ml-platform demo` does."""
    from ml_platform.assemble import build_definitions
    from ml_platform.names import (
        RANGE_END,
        RANGE_START,
        ingest_job_name,
        training_job_name,
    )

    defs = build_definitions(root, spec_dir)
    instance = dg.DagsterInstance.get()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    tags = {RANGE_START: _day(spec, 0), RANGE_END: _day(spec, HISTORY_DAYS - 1)}
    steps = [
        (ingest_job_name(spec), tags, None),
        (training_job_name(spec), {}, None),
        (ingest_job_name(spec), tags, [dg.AssetKey([spec.name, "predictions"])]),
    ]
    for job_name, run_tags, selection in steps:
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, tags=run_tags, asset_selection=selection, run_config=quiet
        )
        assert result.success, job_name


def check_wiring(env: dict[str, str], spec: PipelineSpec) -> None:
    """Fail in seconds, not minutes, when the code location has no automation or ignores the
    test's spec folder: ask a fresh interpreter with the daemon's environment."""
    probe = (
        "import importlib, json; "
        f"defs = importlib.import_module({DEFS_MODULE!r}).defs; "
        "print(json.dumps({s.name: s.minimum_interval_seconds for s in defs.sensors or []}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    intervals = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {landing_sensor_name(spec), drift_sensor_name(spec), FAILURE_SENSOR_NAME}
    missing = expected - set(intervals)
    assert not missing, (
        f"{DEFS_MODULE}.defs has no {sorted(missing)}: wire build_automation and "
        "build_failure_sensor into build_definitions"
    )
    assert intervals[landing_sensor_name(spec)] == SENSOR_INTERVAL_SECONDS, (
        f"{DEFS_MODULE} ignores ML_PLATFORM_SPEC_DIR (landing interval {intervals})"
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, spec: PipelineSpec) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("daemon")
    root = make_platform_root(base / "project")
    spec_dir = e2e_spec_dir(base / "specs", cooldown_hours=24)
    e2e = load_spec(spec_dir / "sales_forecast.yaml", root)
    env = {
        "DAGSTER_HOME": str(root / ".ml_platform" / "dagster_home"),
        "ML_PLATFORM_ROOT": str(root),
        "ML_PLATFORM_SPEC_DIR": str(spec_dir),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("ML_PLATFORM_ALERT_WEBHOOK", raising=False)
        patch.chdir(root)
        from ml_platform.instance import ensure_dagster_home

        ensure_dagster_home(root)
        daemon_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        daemon_env["PYTHONPATH"] = os.pathsep.join(
            p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p
        )
        check_wiring(daemon_env, e2e)
        generate(root, e2e, stores=STORES, days=HISTORY_DAYS, seed=SEED)
        _train_by_hand(root, spec_dir, e2e)
        assert registry_for(root).alias_version(e2e.name, "champion"), "setup promoted no model"
        instance = dg.DagsterInstance.get()
        logs = base / "logs"
        logs.mkdir()
        daemon = DaemonProcess(root, daemon_env, logs)
        stack = Stack(root, e2e, daemon, instance)
        daemon.start()
        try:
            names = [landing_sensor_name(e2e), drift_sensor_name(e2e), FAILURE_SENSOR_NAME]
            try:
                wait_for(
                    lambda: all(
                        (s := stack.sensor_state(n))
                        and s.instigator_data
                        and s.instigator_data.cursor
                        for n in names
                    ),
                    240,
                    f"first ticks of {names} (is {DEFS_MODULE} wired with build_automation?)",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n--- daemon logs ---\n{daemon.logs()}") from exc
            yield stack
        finally:
            daemon.stop()


def test_history_ingested_by_hand_is_not_ingested_again(stack: Stack):
    """The first tick finds 120 files that `raw` already holds with the same md5: no run."""
    stack.wait_ticks(landing_sensor_name(stack.spec), after=0.0, count=2)
    assert stack.ingest_runs() == []


def test_drifted_files_retrain_exactly_once_and_record_the_decision(stack: Stack):
    spec, instance = stack.spec, stack.instance
    first = spec.landing.start_date + timedelta(days=HISTORY_DAYS)
    staging = stack.root.parent / "staging"  # generate first, then land the week at once
    week = generate(
        staging, spec, stores=STORES, days=7, seed=SEED, start=first, shift_from=first,
        shift_strength=1.5,
    )  # fmt: skip
    for path in week:
        os.replace(path, stack.landing / path.name)
    days = [path.stem for path in week]
    wait_for(lambda: all(stack.runs_covering(d) for d in days), 120, "ingest runs for the week")
    runs = {r.run_id: r for d in days for r in stack.runs_covering(d)}
    assert len(runs) == 1, "a backfill drop is one range run"  # renames within a millisecond
    for run in runs.values():
        assert stack.wait_finished(run.run_id).status == dg.DagsterRunStatus.SUCCESS

    reports = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey([spec.name, "drift_report"]), asset_partitions=days),
        limit=100,
    ).records
    assert {r.asset_materialization.partition for r in reports} == set(days)
    drifting = {
        r.storage_id
        for r in reports
        if r.asset_materialization.metadata["dataset_drift"].value
        or r.asset_materialization.metadata["concept_drift"].value
    }
    assert drifting, "a 150 % demand shift must read as dataset or concept drift"

    def drift_runs():
        return instance.get_runs(
            filters=dg.RunsFilter(
                job_name=training_job_name(spec), tags={SENSOR_TAG: drift_sensor_name(spec)}
            )
        )

    training = wait_for(drift_runs, 120, "a drift-triggered training run")
    assert len(training) == 1
    assert stack.wait_finished(training[0].run_id).status == dg.DagsterRunStatus.SUCCESS
    # keyed on the newest drifting report; the range's other reports retrain nothing more
    assert training[0].tags[DRIFT_REPORT_TAG] == str(max(drifting))
    assert training[0].tags["dagster/run_key"] == f"drift_report:{max(drifting)}"
    promotion = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            dg.AssetKey([spec.name, "promotion"]), after_storage_id=max(drifting)
        ),
        limit=1,
    ).records
    assert promotion and promotion[0].asset_materialization.metadata["decision"].value in {
        "promoted",
        "rejected",
        "unchanged",
    }
    stack.wait_ticks(drift_sensor_name(spec), after=time.time(), count=2)
    assert len(drift_runs()) == 1


def test_new_file_is_ingested_by_exactly_one_successful_run(stack: Stack):
    spec = stack.spec
    (path,) = generate(stack.root, spec, stores=STORES, days=1, seed=SEED)
    day = path.stem
    runs = wait_for(lambda: stack.runs_covering(day), 120, f"an ingest run for {day}")
    assert stack.wait_finished(runs[0].run_id).status == dg.DagsterRunStatus.SUCCESS
    stack.wait_ticks(landing_sensor_name(spec), after=time.time(), count=2)
    assert len(stack.runs_covering(day)) == 1
    assert stack.raw_md5(day) == md5_file(path)
    predictions = stack.instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey([spec.name, "predictions"]), asset_partitions=[day]),
        limit=1,
    ).records
    assert predictions


def test_duplicate_drop_of_the_same_content_starts_no_run(stack: Stack):
    path = max(stack.landing.glob("????-??-??.csv"))
    before = len(stack.ingest_runs())
    dropped = time.time()
    atomic_write(path, path.read_bytes())  # same bytes, new inode and mtime
    stack.wait_ticks(landing_sensor_name(stack.spec), after=dropped, count=3)
    assert len(stack.ingest_runs()) == before


def test_corrupt_file_fails_once_with_one_alert_and_the_champion_unchanged(stack: Stack):
    spec = stack.spec
    champion = stack.champion_version()
    assert champion is not None
    latest = date.fromisoformat(max(stack.landing.glob("????-??-??.csv")).stem)
    day = (latest + timedelta(days=1)).isoformat()
    body = "".join(f"{day},S{i:04d},P01,{i},2.50,0\n" for i in range(1, STORES + 1))
    atomic_write(
        stack.landing / f"{day}.csv",
        b"date,store_id,product_id,units,price,promo\n" + body.encode(),
    )
    runs = wait_for(lambda: stack.runs_covering(day), 120, f"an ingest run for {day}")
    assert stack.wait_finished(runs[0].run_id).status == dg.DagsterRunStatus.FAILURE
    run_id = runs[0].run_id

    def alert_lines():
        return [a for a in read_json_lines(alerts_path(stack.root)) if a["run_id"] == run_id]

    (alert,) = wait_for(alert_lines, 120, f"an alert line for run {run_id}")
    assert alert["pipeline"] == spec.name
    assert alert["asset"] == f"{spec.name}/validated"
    assert alert["job"] == ingest_job_name(spec)
    assert "missing required columns ['units_sold']" in alert["reason"]
    assert set(alert) == {"time", "pipeline", "asset", "run_id", "job", "reason"}
    after = time.time()
    stack.wait_ticks(FAILURE_SENSOR_NAME, after=after, count=2)
    stack.wait_ticks(landing_sensor_name(spec), after=after, count=2)
    assert len(alert_lines()) == 1
    assert len(stack.runs_covering(day)) == 1
    assert stack.champion_version() == champion


MID_TICK_KILLS = 2  # kills that must land while a landing tick is in flight
MAX_KILL_ATTEMPTS = 8  # a tick can end between seeing it in flight and the kill: then try again


def _ticks_after(stack: Stack, name: str, after: float) -> list:
    state = stack.sensor_state(name)
    if state is None:
        return []
    return stack.instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)


def _sigkill_during_a_tick(stack: Stack, sensor: str, after: float) -> str:
    """SIGKILL the daemon as soon as a tick that began after `after` is in flight; say where the
    kill landed.

    "mid-tick" is proven, not assumed: the tick is still STARTED once the daemon is dead, so
    nothing finished it (the next daemon resumes it or marks it skipped). If the tick ended before
    the signal arrived, or ended before it was ever seen in flight, the kill still happens and the
    outcome says so.
    """

    def in_flight_or_finished():
        ticks = _ticks_after(stack, sensor, after)
        started = [t.tick_id for t in ticks if t.status == TickStatus.STARTED]
        if started:
            return started[0]
        return -1 if ticks else None

    tick_id = wait_for(in_flight_or_finished, 120, "a landing tick after the drop", poll=0.01)
    stack.daemon.sigkill()  # waits until the process is gone
    if tick_id == -1:
        return "after the tick ended (never seen in flight)"
    (tick,) = [t for t in _ticks_after(stack, sensor, after) if t.tick_id == tick_id]
    if tick.status != TickStatus.STARTED:
        return f"after the tick ended ({tick.status.value})"
    pending = len(tick.unsubmitted_run_ids_with_requests)
    return f"mid-tick ({pending} run request(s) stored but not launched)"


def test_sigkill_during_ticks_loses_no_file_and_processes_none_twice(stack: Stack):
    """Kill the daemon while a landing tick is in flight, twice, with files arriving meanwhile."""
    spec, daemon = stack.spec, stack.daemon
    sensor = landing_sensor_name(spec)
    before = {r.run_id for r in stack.ingest_runs()}
    dropped: list[Path] = []
    outcomes: list[str] = []
    while sum(o.startswith("mid-tick") for o in outcomes) < MID_TICK_KILLS:
        assert len(outcomes) < MAX_KILL_ATTEMPTS, f"too few kills landed mid-tick: {outcomes}"
        start = time.time()
        batch = 3 if not outcomes else 2
        dropped += generate(stack.root, spec, stores=STORES, days=batch, seed=SEED)
        outcomes.append(_sigkill_during_a_tick(stack, sensor, start))
        dropped += generate(stack.root, spec, stores=STORES, days=1, seed=SEED)  # lands while down
        daemon.start()

    print(f"SIGKILL landed: {outcomes}")
    days = [p.stem for p in dropped]
    wait_for(
        lambda: all(stack.runs_covering(d) for d in days), 180, f"runs covering {days} ({outcomes})"
    )
    new_runs = [r for r in stack.ingest_runs() if r.run_id not in before]
    for run in new_runs:
        stack.wait_finished(run.run_id)
    for day in days:
        covering = [r.run_id for r in new_runs if day in run_partitions(r)]
        assert len(covering) == 1, (day, covering, outcomes)
    for path in dropped:
        assert stack.raw_md5(path.stem) == md5_file(path), f"{path.name} lost ({outcomes})"
    stack.wait_ticks(sensor, after=time.time(), count=2)
    assert {r.run_id for r in stack.ingest_runs()} - before == {r.run_id for r in new_runs}
