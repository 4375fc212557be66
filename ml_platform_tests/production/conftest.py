"""Fixtures on the real services this machine and CI run (PostgreSQL, Redis, RabbitMQ on
127.0.0.1). Each test gets its own database, key prefix or queue, and removes it afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ml_platform.production import (
    apply_env,
    create_database,
    drop_database,
    postgres_instance_env,
    restore_env,
    write_postgres_instance,
)
from ml_platform_tests.conftest import make_platform_root


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped at the end (its sessions are ended first)."""
    name = unique("mlp_test")
    assert create_database(name)
    try:
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def postgres_project(tmp_path: Path, pg_database: str, monkeypatch) -> Iterator[Path]:
    """A project root whose DAGSTER_HOME is `deploy/dagster.postgres.yaml` on its own database."""
    root = make_platform_root(tmp_path / "project")
    home = write_postgres_instance(root / ".ml_platform" / "dagster_home")
    saved = apply_env(postgres_instance_env(pg_database))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ML_PLATFORM_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(root)
    try:
        yield root
    finally:
        restore_env(saved)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """An `mlflow server` on its own PostgreSQL database, serving artifacts from a folder no
    client is told about; stopped and its database dropped at the end."""
    from ml_platform.production import start_mlflow_server

    database = unique("mlp_mlflow")
    server = None
    try:
        server = start_mlflow_server(
            database, tmp_path / "server_artifacts", log=tmp_path / "mlflow_server.log"
        )
        server.database = database
        yield server
    finally:
        if server is not None:
            server.stop()
        drop_database(database)
