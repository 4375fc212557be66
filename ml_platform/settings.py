"""Every environment variable the platform reads, each behind a named function with its default.

No dagster import: the CLI, the serving workers and the Dagster definitions all resolve the same
locations and knobs the same way. Variables that Dagster or a library reads itself
(`DAGSTER_EVENT_BATCH_SIZE`, `OMP_NUM_THREADS`) are set where they are needed, not read here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml_platform.specs import SPEC_DIR

ONLINE_STORE_URL_ENV = "ML_PLATFORM_ONLINE_STORE_URL"
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


def mlflow_uri(root: Path) -> str:
    """`MLFLOW_TRACKING_URI` in production; SQLite under `.ml_platform/` by default."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / '.ml_platform' / 'mlflow.db'}"
    )


def online_store_url(root: Path) -> str:
    """`ML_PLATFORM_ONLINE_STORE_URL` (e.g. `redis://127.0.0.1:6379/0`) or SQLite under the root."""
    return os.environ.get(ONLINE_STORE_URL_ENV) or (
        f"sqlite:///{Path(root) / '.ml_platform' / 'online_store.sqlite'}"
    )


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
