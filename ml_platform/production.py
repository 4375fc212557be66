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

from ml_platform.layout import StateLayout
from ml_platform.settings import CELERY_RELIABILITY, postgres_server

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
            env={**os.environ, "PATH": _path_with_our_bin(), **(env or {})},
            start_new_session=True,  # its own process group: stop() ends its children too
        )
    return Service(name=name, process=process, log=log)


def _path_with_our_bin() -> str:
    """PATH with this environment's scripts first: dagster-celery runs `celery` by name."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


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


def write_celery_config(path: Path, queue: str) -> Path:
    """The worker's side of the executor config in `assemble.select_executor`: same broker (from
    `ML_PLATFORM_CELERY_BROKER` when set), same result backend, same queue."""
    import yaml

    from ml_platform.settings import CELERY_BROKER_ENV, DEFAULT_CELERY_BROKER, celery_broker_set

    broker = {"env": CELERY_BROKER_ENV} if celery_broker_set() else DEFAULT_CELERY_BROKER
    config = {
        "execution": {
            "config": {
                "broker": broker,
                "backend": "rpc://",
                "config_source": {"task_default_queue": queue, **CELERY_RELIABILITY},
            }
        }
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_celery_workers(
    count: int, queue: str, log_dir: Path, timeout: float = 120, prefix: str = "mlp"
) -> list[Service]:
    """`count` dagster-celery workers, one step at a time each (`-c 1`), on `queue`.

    They execute steps against the instance in DAGSTER_HOME (PostgreSQL in production) and
    rebuild jobs from the code location `ml_platform.locations`, so they need the same
    environment as the process that launches runs. Returns once every worker says it is ready.
    """
    config = write_celery_config(log_dir / "celery.yaml", queue)
    workers = []
    for index in range(1, count + 1):
        name = f"{prefix}-{queue}-{index}"
        command = [
            _bin("dagster-celery"), "worker", "start",
            "-A", "dagster_celery.app",
            "-y", str(config),
            "-q", queue,
            "-n", name,
            "--", "-c", "1",
        ]  # fmt: skip
        workers.append(_start(name, command, log_dir / f"worker-{index}.log"))
    deadline = time.monotonic() + timeout
    pending = list(workers)
    while pending and time.monotonic() < deadline:
        for worker in list(pending):
            if worker.process.poll() is not None:
                for w in workers:
                    w.stop()
                raise RuntimeError(f"celery worker {worker.name} exited; see {worker.log}")
            if b" ready." in worker.log.read_bytes():
                pending.remove(worker)
        time.sleep(0.5)
    if pending:
        for w in workers:
            w.stop()
        raise RuntimeError(f"celery workers not ready after {timeout:.0f}s: {pending[0].log}")
    return workers


def delete_celery_queue(queue: str) -> None:
    """Remove `queue` from the broker (tests use their own queue names)."""
    from kombu import Connection

    from ml_platform.settings import celery_broker_url

    with Connection(celery_broker_url()) as conn:
        conn.default_channel.queue_delete(queue)


DAGSTER_DATABASE = "ml_platform_dagster"
MLFLOW_DATABASE = "ml_platform_mlflow"
MLFLOW_DB_ENV = "ML_PLATFORM_MLFLOW_DB"  # the MLflow server's database (a test's own, a 2nd team)
DEMO_QUEUE = "ml_platform"
DEMO_BATCH_DAYS = "92"  # a 730-day backfill becomes 8 runs per wave, spread over the workers
DEMO_REDIS = "redis://127.0.0.1:6379/0"


def run_distributed_demo(root: Path, pipelines: list[str] | None = None, workers: int = 2) -> int:
    """`make demo-distributed`: the same demo and summary as `ml-platform demo`, on real services.

    It uses the PostgreSQL, Redis and RabbitMQ that are running (DAGSTER_PG_*,
    ML_PLATFORM_MLFLOW_DB, ML_PLATFORM_ONLINE_STORE_URL, ML_PLATFORM_CELERY_BROKER and _QUEUE
    override the local defaults), starts
    what is missing (an MLflow server on PostgreSQL that serves artifacts, `workers` Celery
    workers), and stops everything it started when it ends. Runs are launched from this process
    (no daemon needed: the daemon only serves sensors, schedules and the run queue).
    """
    from ml_platform.demo import run_demo
    from ml_platform.settings import (
        CELERY_QUEUE_ENV,
        MAX_PARTITIONS_PER_RUN_ENV,
        ONLINE_STORE_URL_ENV,
        dagster_pg_database,
        operator_value,
        use_passive_openmp,
    )

    use_passive_openmp()
    root = Path(root).resolve()
    state = StateLayout(root).production
    logs = state / "logs"
    dagster_db = dagster_pg_database(DAGSTER_DATABASE)
    create_database(dagster_db)
    home = write_postgres_instance(state / "dagster_home")
    env = {
        **postgres_instance_env(dagster_db),
        "DAGSTER_HOME": str(home),
        "ML_PLATFORM_ROOT": str(root),
        "ML_PLATFORM_EXECUTOR": "celery",
        CELERY_QUEUE_ENV: operator_value(CELERY_QUEUE_ENV) or DEMO_QUEUE,
        MAX_PARTITIONS_PER_RUN_ENV: operator_value(MAX_PARTITIONS_PER_RUN_ENV) or DEMO_BATCH_DAYS,
        ONLINE_STORE_URL_ENV: operator_value(ONLINE_STORE_URL_ENV) or DEMO_REDIS,
    }
    saved = apply_env(env)
    started: list[Service] = []
    try:
        mlflow_db = os.environ.get(MLFLOW_DB_ENV) or MLFLOW_DATABASE
        print(f"[0/6] starting an MLflow server on PostgreSQL ({mlflow_db}) …", flush=True)
        mlflow = start_mlflow_server(mlflow_db, state / "mlartifacts", logs / "mlflow.log")
        started.append(mlflow)
        saved.update(apply_env({"MLFLOW_TRACKING_URI": mlflow.url}))
        print(f"      MLflow {mlflow.url}; starting {workers} Celery workers …", flush=True)
        started.extend(start_celery_workers(workers, env["ML_PLATFORM_CELERY_QUEUE"], logs))
        print(f"      workers ready (logs in {logs})", flush=True)
        return run_demo(root, pipelines)
    finally:
        for service in reversed(started):
            service.stop()
        restore_env(saved)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ml_platform.settings import default_root

    parser = argparse.ArgumentParser(prog="python -m ml_platform.production")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the demo on PostgreSQL, MLflow server, Celery, Redis")
    demo.add_argument("--pipeline", action="append", help="pipeline name (repeatable)")
    demo.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    # A SIGTERM (a supervisor, `timeout`, a test) still stops the server and workers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run_distributed_demo(default_root(), args.pipeline, args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
