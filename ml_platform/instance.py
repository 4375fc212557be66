"""The persistent Dagster instance under `.ml_platform/dagster_home` (embedded default).

A persistent DAGSTER_HOME keeps run history, asset versions and sensor cursors across restarts.
Production points DAGSTER_HOME at a folder whose dagster.yaml uses dagster-postgres instead
(see `deploy/dagster.postgres.yaml`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ml_platform.layout import StateLayout
from ml_platform.settings import dagster_home_from_env, gc_freeze_enabled, sqlite_durable

DAGSTER_YAML = """\
# Embedded default: SQLite storage under this folder. See deploy/dagster.postgres.yaml for Postgres.
telemetry:
  enabled: false
run_queue:
  max_concurrent_runs: 2
  # One run per pipeline at a time: day D+1's features must not be built before day D is validated.
  tag_concurrency_limits:
    - key: ml_platform/pipeline
      value:
        applyLimitPerUniqueValue: true
      limit: 1
# Dagster fails runs that never start or never finish cancelling; a run whose process died is
# failed by the `…dead_run_monitor` sensor and at every CLI run (ml_platform/automation/zombies.py),
# because the default run launcher cannot report a dead run worker.
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
# Dagster's SQLite event log, with engines kept open (ml_platform/dagster_storage.py).
# A relative base_dir is resolved against DAGSTER_HOME, so the folder can be moved or copied.
event_log_storage:
  module: ml_platform.dagster_storage
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {runs_dir}
"""
# What earlier versions wrote, recognised so their absolute event-log path can be upgraded.
_MONITORING_BEFORE = "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 30\n"
_EARLIER_YAML = _MONITORING_BEFORE.join(
    (
        DAGSTER_YAML.split("# Dagster fails runs")[0],
        DAGSTER_YAML.split("cancel_timeout_seconds: 180\n")[1],
    )
)
RUNS_DIR = "history/runs"  # relative to DAGSTER_HOME, as Dagster's own SQLite storages are
# Earlier versions wrote the event log's absolute path; a copied or moved project then kept
# writing its events into the old folder.
_ABSOLUTE_BASE_DIR = re.compile(r'^    base_dir: (".*")$', re.MULTILINE)


class RelocatedInstanceError(RuntimeError):
    """A dagster.yaml that names another folder's event log: refuse rather than write there."""


def dagster_yaml(home: Path | None = None) -> str:
    """The embedded instance's config: no absolute paths, so its folder can move.

    With `home`, the event log's path is written absolute instead: only for an instance opened by
    folder (`DagsterInstance.from_config(home)`) in a process whose DAGSTER_HOME is elsewhere.
    """
    if home is None:
        return DAGSTER_YAML.format(runs_dir=RUNS_DIR)
    return DAGSTER_YAML.format(runs_dir=json.dumps(str(Path(home).resolve() / RUNS_DIR)))


def ensure_dagster_home(root: Path) -> Path:
    """Use DAGSTER_HOME if set, else `.ml_platform/dagster_home`, creating it with a config.

    A config written by an earlier version holds the event log's absolute path: if that is the
    file we generated, it is rewritten to the relative form (the events are in this folder's
    `history/runs` either way when it was moved or copied whole); a hand-edited config that
    points outside this DAGSTER_HOME is refused with the paths named.
    """
    secure_state(root)
    home = dagster_home_from_env() or StateLayout(root).dagster_home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(dagster_yaml())
    else:
        _upgrade_absolute_event_log(config, home)
    os.environ["DAGSTER_HOME"] = str(home.resolve())
    return home


STATE_DIR_MODE, STATE_FILE_MODE = 0o700, 0o600


def secure_state(root: Path) -> None:
    """Owner-only state: run history, event logs, alerts, audit trail, prediction logs.

    They hold failure messages, entity ids and request ids, so this process and every process it
    starts (the daemon, code servers, run workers, uvicorn workers) create files 0600 and folders
    0700 (umask 077); SQLite and Dagster create files with the umask applied. A `.ml_platform`
    left readable by an earlier version is tightened once, file by file.
    """
    os.umask(0o077)
    state = Path(root) / ".ml_platform"
    state.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    if state.stat().st_mode & 0o777 == STATE_DIR_MODE:
        return
    for folder, _dirs, files in os.walk(state):
        os.chmod(folder, STATE_DIR_MODE)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, STATE_FILE_MODE)


def _upgrade_absolute_event_log(config: Path, home: Path) -> None:
    text = config.read_text()
    match = _ABSOLUTE_BASE_DIR.search(text)
    if match is None:
        return
    old = Path(json.loads(match.group(1)))
    if not old.is_absolute():
        return
    earlier = {t.format(runs_dir=match.group(1)) for t in (DAGSTER_YAML, _EARLIER_YAML)}
    if text in earlier:  # ours, as an earlier version wrote it
        config.write_text(dagster_yaml())
        return
    here = (home / RUNS_DIR).resolve()
    if old.resolve() != here:
        raise RelocatedInstanceError(
            f"{config} keeps its event log in {old}, outside this instance ({here}): the "
            f"project was moved or copied. Set `base_dir: {RUNS_DIR}` (relative to "
            "DAGSTER_HOME) to use this folder's history."
        )


_TUNED = False


def tune_embedded_sqlite() -> None:
    """Make the embedded Dagster SQLite storage fast enough for daily-partition backfills.

    Dagster opens and closes a SQLite connection per write; with SQLite's defaults every close
    checkpoints and fsyncs, which costs ~100 ms per partition event on this kind of disk (a
    730-partition backfill spent minutes on bookkeeping). WAL with `synchronous=OFF` survives a
    crash of any process and loses only recent run-history writes on an OS crash or power loss.
    It applies only to databases under DAGSTER_HOME: MLflow's registry and our data files keep
    full durability. Set ML_PLATFORM_SQLITE_DURABLE=1 to opt out; production uses Postgres.
    """
    global _TUNED
    if _TUNED or sqlite_durable():
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection: object, _record: object) -> None:
        home = dagster_home_from_env()
        if home is None or not isinstance(dbapi_connection, sqlite3.Connection):
            return
        cursor = dbapi_connection.cursor()
        try:
            path = cursor.execute("PRAGMA database_list").fetchone()[2]
            if path and Path(path).resolve().is_relative_to(home.resolve()):
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=OFF")
        finally:
            cursor.close()

    _TUNED = True


def freeze_loaded_heap() -> int:
    """Exclude everything loaded so far from Python's cyclic garbage collector; returns how many.

    A process that loads this code location (a run worker, the daemon, the webserver's code
    server) keeps its import-time objects for life: Dagster, MLflow, pandas and scikit-learn leave
    about 300,000 of them. Each full collection walked them all again, about 0.25 s on this kind
    of machine, and a full collection fires whenever a run allocates enough (a bigger model tips
    it), so a new-day run paid it or not by chance. Frozen, they are skipped; only the objects
    a run creates are collected. The import leaves almost no garbage to strand (28 objects when
    measured). Set ML_PLATFORM_GC_FREEZE=0 to opt out.
    """
    import gc

    if not gc_freeze_enabled():
        return 0
    gc.freeze()
    return gc.get_freeze_count()
