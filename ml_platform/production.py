"""The production profile on real services: PostgreSQL for Dagster and MLflow, an MLflow server
that serves artifacts, Celery workers on RabbitMQ, Redis for online features.

Nothing here changes a pipeline: the profile is chosen by environment variables only (see
`settings.py` and `deploy/`). These helpers create what a machine lacks (databases, the instance
folder, an MLflow server, Celery workers) for `make demo-distributed` and the tests in
`ml_platform_tests/production/`. Credentials are read from the environment, never written into
Dagster run config.
"""

from __future__ import annotations

import os
import shutil
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


def postgres_url(database: str) -> str:
    """A SQLAlchemy URL for `database` with the psycopg2 driver named (see the deploy yaml)."""
    from urllib.parse import quote

    s = postgres_server()
    auth = quote(s["user"]) + (f":{quote(s['password'])}" if s["password"] else "")
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
