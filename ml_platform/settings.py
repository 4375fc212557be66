"""Every environment variable the platform reads, each behind a named function with its default.

No dagster import: the CLI, the serving workers and the Dagster definitions all resolve the same
locations and knobs the same way. Variables that Dagster or a library reads itself
(`DAGSTER_EVENT_BATCH_SIZE`, `OMP_NUM_THREADS`) are set where they are needed, not read here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml_platform.layout import StateLayout
from ml_platform.specs import SPEC_DIR

ONLINE_STORE_URL_ENV = "ML_PLATFORM_ONLINE_STORE_URL"
DATA_ROOT_ENV = "ML_PLATFORM_DATA_ROOT"
SERVING_URL_ENV = "ML_PLATFORM_SERVING_URL"
DEFAULT_SERVING_URL = "http://127.0.0.1:8000"
ALERT_WEBHOOK_ENV = "ML_PLATFORM_ALERT_WEBHOOK"
SERVE_RELOAD_SECONDS_ENV = "ML_PLATFORM_SERVE_RELOAD_SECONDS"
SERVE_BODY_TIMEOUT_ENV = "ML_PLATFORM_SERVE_BODY_TIMEOUT_SECONDS"
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it too


def default_root() -> Path:
    """The project root: `ML_PLATFORM_ROOT` if set, else the working directory."""
    return Path(os.environ.get("ML_PLATFORM_ROOT") or Path.cwd()).resolve()


def spec_dir_from_env() -> Path:
    """`ML_PLATFORM_SPEC_DIR` if set (tests with short sensor intervals, a second deployment),
    else the packaged specs."""
    return Path(os.environ.get("ML_PLATFORM_SPEC_DIR") or SPEC_DIR)


def data_root(root: Path) -> str:
    """`ML_PLATFORM_DATA_ROOT` (a folder or a URL such as `s3://bucket/prefix`, read through
    fsspec) or `<root>/data`. Landing files, DVC and runtime state stay under the project root."""
    return os.environ.get(DATA_ROOT_ENV) or str(Path(root) / "data")


def mlflow_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` in production; SQLite under `.ml_platform/` by default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{StateLayout(root).mlflow_db}"


def mlflow_artifact_root(root: Path) -> str:
    """Where new experiments keep artifacts: `.ml_platform/mlartifacts` by default; "" (the
    server's choice, `mlflow-artifacts:/`) when MLFLOW_TRACKING_URI names an MLflow server, so
    clients upload through it and need no shared disk."""
    if mlflow_uri(root).startswith(("http://", "https://")):
        return ""
    return str(StateLayout(root).mlartifacts)


def online_store_url(root: Path) -> str:
    """`ML_PLATFORM_ONLINE_STORE_URL` (e.g. `redis://127.0.0.1:6379/0`) or SQLite under the root."""
    return os.environ.get(ONLINE_STORE_URL_ENV) or (f"sqlite:///{StateLayout(root).online_store}")


def serving_url() -> str:
    """Where the canary sensor scrapes the serving app's `/metrics`."""
    return os.environ.get(SERVING_URL_ENV, DEFAULT_SERVING_URL).rstrip("/")


def alert_webhook_url() -> str | None:
    """`ML_PLATFORM_ALERT_WEBHOOK`: where alerts are POSTed as well as written to the file."""
    return os.environ.get(ALERT_WEBHOOK_ENV) or None


def serve_reload_seconds() -> float:
    """`ML_PLATFORM_SERVE_RELOAD_SECONDS`: how often a serving worker checks the aliases."""
    return float(os.environ.get(SERVE_RELOAD_SECONDS_ENV, "5"))


def serve_body_timeout_seconds() -> float:
    """`ML_PLATFORM_SERVE_BODY_TIMEOUT_SECONDS`: how long a `/predict` body may take to arrive
    before the request is refused with 408 (a client trickling bytes never holds a worker)."""
    return float(os.environ.get(SERVE_BODY_TIMEOUT_ENV, "10"))


def prometheus_multiproc_dir() -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR`, set by `ml-platform serve` when workers share their metrics."""
    return os.environ.get(PROMETHEUS_MULTIPROC_ENV) or None


def dagster_home_from_env() -> Path | None:
    """`DAGSTER_HOME` if set (production, or a test's instance); None means the embedded one."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home) if home else None


def sqlite_durable() -> bool:
    """`ML_PLATFORM_SQLITE_DURABLE=1` keeps SQLite's full durability for the Dagster instance."""
    return os.environ.get("ML_PLATFORM_SQLITE_DURABLE") == "1"


def gc_freeze_enabled() -> bool:
    """`ML_PLATFORM_GC_FREEZE=0` turns off `instance.freeze_loaded_heap`."""
    return os.environ.get("ML_PLATFORM_GC_FREEZE") != "0"


def use_passive_openmp() -> None:
    """Called first by each process entry point (code locations, CLI, tests), never at import of
    a library module: OpenMP threads in sklearn's HistGradientBoosting spin-wait by default, and
    on a busy 2-core machine that turned a 0.3 s fit into minutes. It must be set before OpenMP
    loads; an operator's own value wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Production profile (ml_platform/production.py, deploy/). Dagster reads the DAGSTER_PG_* variables
# itself through deploy/dagster.postgres.yaml; these functions give the same values to our helpers.
DAGSTER_PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")


def postgres_server() -> dict[str, str]:
    """Where PostgreSQL is (`DAGSTER_PG_HOST`, `_PORT`, `_USER`, `_PASSWORD`); local by default."""
    return {
        "host": os.environ.get("DAGSTER_PG_HOST", "127.0.0.1"),
        "port": os.environ.get("DAGSTER_PG_PORT", "5432"),
        "user": os.environ.get("DAGSTER_PG_USER", "postgres"),
        "password": os.environ.get("DAGSTER_PG_PASSWORD", ""),
    }


EXECUTOR_ENV = "ML_PLATFORM_EXECUTOR"
EXECUTORS = ("in_process", "multiprocess", "celery")
CELERY_BROKER_ENV = "ML_PLATFORM_CELERY_BROKER"
DEFAULT_CELERY_BROKER = "pyamqp://guest@127.0.0.1:5672//"
CELERY_QUEUE_ENV = "ML_PLATFORM_CELERY_QUEUE"
MAX_PARTITIONS_PER_RUN_ENV = "ML_PLATFORM_MAX_PARTITIONS_PER_RUN"


def executor_name() -> str:
    """`ML_PLATFORM_EXECUTOR`: `in_process` (embedded default), `multiprocess`, or `celery`
    (steps on dagster-celery workers; needs a persistent instance, PostgreSQL in production)."""
    name = os.environ.get(EXECUTOR_ENV) or "in_process"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    return name


def celery_broker_set() -> bool:
    """Whether `ML_PLATFORM_CELERY_BROKER` names the broker (else the local RabbitMQ, as guest)."""
    return bool(os.environ.get(CELERY_BROKER_ENV))


# Celery settings both sides use (executor and workers; deploy/celery.yaml). By default Celery acks
# a task when a worker takes it, so a worker killed mid-step lost the step and its run waited for
# a result forever. Acked only when done, the broker hands an unfinished step to another worker
# when the dead one's connection drops; a step writes whole files only (temp + rename), so running
# it again rewrites the same bytes. One task prefetched per worker, so none waits behind a slow one.
CELERY_RELIABILITY = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def celery_broker_url() -> str:
    """`ML_PLATFORM_CELERY_BROKER`, else the local RabbitMQ as guest."""
    return os.environ.get(CELERY_BROKER_ENV) or DEFAULT_CELERY_BROKER


def dagster_pg_database(default: str) -> str:
    """`DAGSTER_PG_DB`: the Dagster instance's PostgreSQL database."""
    return os.environ.get("DAGSTER_PG_DB") or default


def operator_value(name: str) -> str | None:
    """An operator's own value of one of the variables above (unset or empty: None), for the
    distributed demo, which keeps it and otherwise sets its own default."""
    return os.environ.get(name) or None


def celery_queue() -> str:
    """`ML_PLATFORM_CELERY_QUEUE`: the queue steps are sent to and workers listen on."""
    return os.environ.get(CELERY_QUEUE_ENV) or "dagster"


def max_partitions_per_run() -> int | None:
    """`ML_PLATFORM_MAX_PARTITIONS_PER_RUN`: backfills of daily assets split into runs of at most
    this many days, so several workers share them; unset keeps one run per backfill (embedded
    default, fastest on one process). A single new day is one run either way."""
    value = os.environ.get(MAX_PARTITIONS_PER_RUN_ENV)
    if not value:
        return None
    if int(value) < 1:
        raise ValueError(f"{MAX_PARTITIONS_PER_RUN_ENV} must be at least 1, got {value}")
    return int(value)
