"""Secrets never stored: credentialed URLs stay out of run snapshots, event logs and alerts,
and state files are owner-only (0600 files in 0700 folders)."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ml_platform.core.secrets import RedactedError, errors_redacted, redact
from ml_platform_tests.conftest import generate

MLFLOW_SECRET = "mlflow-pw-5ecret"
REDIS_SECRET = "redis-pw-5ecret"


def test_redact_masks_url_passwords_and_password_parameters():
    assert redact("postgresql://ml:pa55@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
    assert redact("redis://:pa55@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("http://u:p%40ss@h/x?password=abc&x=1") == "http://u:***@h/x?password=***&x=1"
    assert redact("sqlite:////tmp/a.db and user@host") == "sqlite:////tmp/a.db and user@host"


def test_an_error_quoting_a_credential_is_reraised_masked_with_its_chain_cut():
    with pytest.raises(RedactedError) as caught, errors_redacted():
        try:
            raise OSError("connect to redis://:hunter2@10.0.0.1:6379 refused")
        except OSError as exc:
            raise RuntimeError("store failed") from exc
    text = str(caught.value)
    assert "hunter2" not in text and "redis://:***@10.0.0.1" in text and "store failed" in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(ValueError), errors_redacted():  # nothing secret: the error untouched
        raise ValueError("plain")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _texts_of(db: Path) -> str:
    """Every value of every table, zlib blobs (Dagster's snapshots) decompressed."""
    parts = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        with contextlib.suppress(zlib.error):
                            value = zlib.decompress(value)
                        value = value.decode("utf-8", "replace")
                    parts.append(str(value))
    return "\n".join(parts)


def _cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "ml-platform"), *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_credentialed_urls_are_in_no_snapshot_event_log_or_alert(isolated_env, spec):
    root = isolated_env
    generate(root, spec, stores=2, days=30, seed=4)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://mlops:{MLFLOW_SECRET}@127.0.0.1:{_closed_port()}",
        "ML_PLATFORM_ONLINE_STORE_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:{_closed_port()}/0",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    ingest = _cli(root, env, "materialize", spec.name, "raw", "validated", "quarantine", "features")
    assert ingest.returncode != 0  # the online store is unreachable
    training = _cli(root, env, "materialize", spec.name, "training_set", "challenger", "promotion")
    assert training.returncode != 0  # so is the tracking server
    for output in (ingest, training):
        assert MLFLOW_SECRET not in output.stdout + output.stderr
        assert REDIS_SECRET not in output.stdout + output.stderr

    state = root / ".ml_platform"
    databases = list(state.rglob("*.db"))
    runs_db = state / "dagster_home" / "history" / "runs.db"
    assert runs_db in databases and len(databases) >= 3  # runs, index, one shard per run
    stored = "\n".join(_texts_of(db) for db in databases)
    assert "ML_PLATFORM_ONLINE_STORE_URL" in stored  # the snapshots name the variable...
    assert MLFLOW_SECRET not in stored and REDIS_SECRET not in stored  # ...never its value
    alerts = (state / "alerts.jsonl").read_text()
    assert spec.name in alerts and MLFLOW_SECRET not in alerts and REDIS_SECRET not in alerts

    for path in [state, *state.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"


def test_an_earlier_world_readable_state_folder_is_tightened(tmp_path: Path):
    from ml_platform.instance import secure_state

    state = tmp_path / ".ml_platform" / "audit"
    state.mkdir(parents=True)
    (state / "sales_forecast.jsonl").write_text("{}\n")
    os.chmod(state, 0o755)
    os.chmod(state.parent, 0o755)
    os.chmod(state / "sales_forecast.jsonl", 0o644)
    old = os.umask(0o022)
    try:
        secure_state(tmp_path)
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "sales_forecast.jsonl").stat().st_mode) == 0o600
