"""The production profile on real services: PostgreSQL for Dagster and MLflow, an MLflow server
that serves artifacts, Celery workers on RabbitMQ, Redis for online features.

Nothing here changes a pipeline: the profile is chosen by environment variables only (see
`settings.py` and `deploy/`). These helpers create what a machine lacks (databases, the instance
folder, an MLflow server, Celery workers) for `make demo-distributed` and the tests in
`ml_platform_tests/production/`. Credentials are read from the environment, never written into
Dagster run config.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ml_platform.settings import postgres_server

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
POSTGRES_INSTANCE_YAML = DEPLOY_DIR / "dagster.postgres.yaml"


def _connect(dbname: str = "postgres"):
    import psycopg2

    server = postgres_server()
    conn = psycopg2.connect(dbname=dbname, **server)
    conn.autocommit = True
    return conn


def create_database(name: str) -> bool:
    """Create database `name` on the configured server; False if it already existed."""
    from psycopg2 import sql

    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        conn.close()


def drop_database(name: str) -> None:
    """Drop database `name`, ending its sessions first (PostgreSQL 13+)."""
    from psycopg2 import sql

    conn = _connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        conn.close()


def postgres_url(database: str, with_password: bool = True) -> str:
    """A SQLAlchemy URL for `database` with the psycopg2 driver named (see the deploy yaml).

    Without the password, the server process gets it as `PGPASSWORD` (libpq reads it), so it
    never shows in a process list.
    """
    from urllib.parse import quote

    s = postgres_server()
    secret = with_password and s["password"]
    auth = quote(s["user"]) + (f":{quote(s['password'])}" if secret else "")
    return f"postgresql+psycopg2://{auth}@{s['host']}:{s['port']}/{database}"


def write_postgres_instance(home: Path) -> Path:
    """Make `home` a DAGSTER_HOME on PostgreSQL: `deploy/dagster.postgres.yaml`, as shipped.

    The database is named by `DAGSTER_PG_DB` at run time; the file holds no secrets.
    """
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(POSTGRES_INSTANCE_YAML, home / "dagster.yaml")
    return home


def postgres_instance_env(database: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables that `deploy/dagster.postgres.yaml` reads, for `database`."""
    s = postgres_server()
    return {
        "DAGSTER_PG_HOST": s["host"],
        "DAGSTER_PG_PORT": s["port"],
        "DAGSTER_PG_USER": s["user"],
        "DAGSTER_PG_PASSWORD": s["password"],
        "DAGSTER_PG_DB": database,
    }


def apply_env(values: dict[str, str]) -> dict[str, str | None]:
    """Set environment variables; returns the previous values for `restore_env`."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Service:
    """A process we started (in its own process group), its log, and how to reach it."""

    name: str
    process: subprocess.Popen
    log: Path
    url: str = ""

    def stop(self, grace_seconds: float = 15) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the grace period."""
        group = self.process.pid  # started with start_new_session: it leads its own group
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_seconds)
        # Whatever is left, children included (Celery pool processes, server workers).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(10)


def _start(name: str, command: list[str], log: Path, env: dict[str, str] | None = None) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() ends its children too
        )
    return Service(name=name, process=process, log=log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (mlflow, dagster-celery, …)."""
    return str(Path(sys.executable).parent / name)


def start_mlflow_server(
    database: str, artifacts_dir: Path, log: Path, port: int | None = None, timeout: float = 180
) -> Service:
    """`mlflow server` on PostgreSQL `database` (created if missing) serving the artifacts it
    stores under `artifacts_dir` (`--artifacts-destination`): clients upload and download
    through HTTP and need no shared disk. Returns once `/health` answers."""
    import urllib.request

    create_database(database)
    port = port or free_port()
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    command = [
        _bin("mlflow"), "server",
        "--backend-store-uri", postgres_url(database, with_password=False),
        "--artifacts-destination", artifacts_dir.resolve().as_uri(),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {"PGPASSWORD": postgres_server()["password"]}
    service = _start("mlflow", command, log, env)
    service.url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({service.process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{service.url}/health", timeout=2) as response:
                if response.status == 200:
                    return service
        except OSError:
            time.sleep(0.5)
    service.stop()
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f}s; see {log}")
