"""Where the platform's state lives, from environment variables with embedded defaults.

No dagster import: the CLI, the serving workers and the Dagster definitions all resolve the same
locations the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml_platform.specs import SPEC_DIR

ONLINE_STORE_URL_ENV = "ML_PLATFORM_ONLINE_STORE_URL"
SERVING_URL_ENV = "ML_PLATFORM_SERVING_URL"
DEFAULT_SERVING_URL = "http://127.0.0.1:8000"


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
