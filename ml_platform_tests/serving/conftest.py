"""A trained platform with 120 entities and a real `ml-platform serve` (two uvicorn workers).

The session's `serving_root` and `server` are shared by tests that leave the registry as it is; a
test file that moves aliases builds its own with `trained_serving_root` and `running_server`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ml_platform_tests.conftest import activated, generate, make_platform_root, wait_for

STORES, PRODUCTS = 40, 3  # 120 entities: enough for a 5 % canary share to hold a few of them


def trained_serving_root(path: Path, spec) -> Path:
    """A project root at `path` taken through the demo: data, features, a champion."""
    from ml_platform.demo import run_demo

    root = make_platform_root(path)
    with activated(root):
        generate(root, spec, stores=STORES, products=PRODUCTS, days=300, seed=5)
        assert run_demo(root, spec.name) == 0
    return root


@pytest.fixture(scope="session")
def serving_root(tmp_path_factory: pytest.TempPathFactory, spec) -> Path:
    return trained_serving_root(tmp_path_factory.mktemp("serving") / "project", spec)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(serving_root: Path) -> Iterator[str]:
    with running_server(serving_root) as url:
        yield url


@contextlib.contextmanager
def running_server(serving_root: Path, ready_timeout: float = 60) -> Iterator[str]:
    """The CLI a user runs, in its own process group; stopped (all workers) at the end."""
    port = free_port()
    env = {**os.environ, "ML_PLATFORM_ROOT": str(serving_root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        str(Path(sys.executable).parent / "ml-platform"),
        "serve",
        "--port",
        str(port),
        "--workers",
        "2",
        "--reload-seconds",
        "0.5",
    ]
    log = (serving_root / "serve.log").open("w")
    process = subprocess.Popen(
        command,
        cwd=serving_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {(serving_root / 'serve.log').read_text()}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, ready_timeout, "the server to become ready")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def all_entities(root: Path, spec) -> list[dict[str, str]]:
    import pandas as pd

    from ml_platform.core.datagen import latest_landing_day

    last = latest_landing_day(root / spec.landing.directory)
    frame = pd.read_parquet(root / "data" / spec.name / "features" / f"{last}.parquet")
    return frame[spec.entity_keys].astype(str).to_dict("records")
