"""Fault injection on the write path: a broken offline or online store mid-run.

After each fault: the run fails and says why, no online row exists that the offline store lacks
(the online/offline skew the platform promises never to have), and a re-run completes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ml_platform.demo import landing_days, materialize
from ml_platform.settings import ONLINE_STORE_URL_ENV
from ml_platform_tests.conftest import generate, registry_for, wait_for

INGEST = ["raw", "validated", "quarantine", "features"]


def _online(root: Path, pipeline: str) -> set[tuple[str, str]]:
    """(entity, feature day) of every online row, read with plain sqlite3."""
    db = root / ".ml_platform" / "online_store.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT entity, feature_day FROM features WHERE pipeline = ?", [pipeline]
        ).fetchall()
    return set(rows)


def _offline(root: Path, spec, day: str) -> set[str]:
    path = root / "data" / spec.name / "features" / f"{day}.parquet"
    if not path.is_file():
        return set()
    frame = pd.read_parquet(path)
    return set(frame[spec.entity_keys].astype(str).agg("|".join, axis=1))


def _assert_no_skew(root: Path, spec) -> None:
    online = _online(root, spec.name)
    assert online, "the online store should hold the earlier days' rows"
    for entity, day in online:
        assert entity in _offline(root, spec, day), f"online row {entity}@{day} not offline"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.mark.slow
def test_a_broken_offline_or_online_store_leaves_no_skew_and_a_rerun_completes(
    isolated_env, spec, monkeypatch: pytest.MonkeyPatch, capsys
):
    root = isolated_env
    generate(root, spec, stores=3, days=40, seed=2)
    landing = root / spec.landing.directory
    last = landing_days(landing)[-1]
    held = root / f"{last}.csv"
    shutil.move(landing / f"{last}.csv", held)
    assert materialize(root, spec, INGEST)
    shutil.move(held, landing / f"{last}.csv")
    before = _online(root, spec.name)

    # 1. The offline write fails (its target is a folder, as a full or broken disk would refuse):
    # the online store must not have been touched.
    blocked = root / "data" / spec.name / "features" / f"{last}.parquet"
    blocked.mkdir()
    assert not materialize(root, spec, INGEST, partition=last)
    assert _online(root, spec.name) == before
    _assert_no_skew(root, spec)
    blocked.rmdir()

    # 2. The online store is down mid-run: the run fails naming it, the offline rows are there,
    # and the online store holds nothing the offline store lacks.
    monkeypatch.setenv(ONLINE_STORE_URL_ENV, f"redis://127.0.0.1:{_closed_port()}/0")
    capsys.readouterr()
    assert not materialize(root, spec, INGEST, partition=last)
    assert "Connection" in capsys.readouterr().out  # the cause, not only the wrapper message
    assert _offline(root, spec, last)
    _assert_no_skew(root, spec)

    # 3. Store back: the re-run completes and the new day is online.
    monkeypatch.delenv(ONLINE_STORE_URL_ENV)
    assert materialize(root, spec, INGEST, partition=last)
    online = _online(root, spec.name)
    assert {entity for entity, day in online if day == last} == _offline(root, spec, last)
    _assert_no_skew(root, spec)


def _step_started(home: Path, step: str) -> str | None:
    """The id of a run whose `step` has started, read from the run's event-log shard."""
    for shard in (home / "history" / "runs").glob("*.db"):
        if shard.stem == "index":
            continue
        try:
            with sqlite3.connect(f"file:{shard}?mode=ro", uri=True) as conn:
                found = conn.execute(
                    "SELECT 1 FROM event_logs WHERE dagster_event_type = 'STEP_START' "
                    "AND step_key LIKE ?",
                    [f"%{step}%"],
                ).fetchone()
        except sqlite3.OperationalError:  # being created
            continue
        if found:
            return shard.stem
    return None


@pytest.mark.slow
def test_kill_9_during_training_leaves_the_champion_and_a_rerun_decides(isolated_env, spec):
    """SIGKILL while the challenger is being fitted and logged: no champion appears from half a
    run, the dead run is failed, every stored data product still reads, and a re-run decides."""
    root = isolated_env
    generate(root, spec, stores=3, days=120, seed=6)
    assert materialize(root, spec, INGEST)
    registry = registry_for(root)
    assert registry.alias_version(spec.name, "champion") is None
    home = root / ".ml_platform" / "dagster_home"
    command = [str(Path(sys.executable).parent / "ml-platform"), "materialize", spec.name]
    command += ["training_set", "challenger", "promotion"]
    with (root / "killed.log").open("w") as log:
        process = subprocess.Popen(command, cwd=root, env=dict(os.environ), stdout=log, stderr=log)
        try:
            killed = wait_for(
                lambda: _step_started(home, "challenger") or process.poll() is not None,
                300,
                "the challenger step to start",
                poll=0.05,
            )
            assert isinstance(killed, str), (root / "killed.log").read_text()
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
    assert registry.alias_version(spec.name, "champion") is None  # no promotion finished
    for path in (root / "data").rglob("*.parquet"):
        pd.read_parquet(path)  # nothing half-written under a name a reader uses

    assert materialize(root, spec, ["training_set", "challenger", "promotion"])
    import dagster as dg

    instance = dg.DagsterInstance.get()
    assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
    # The re-run decided (promote or keep: on this little data either is right), in a new run.
    decision = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "promotion"]))
    assert decision is not None and decision.run_id != killed
