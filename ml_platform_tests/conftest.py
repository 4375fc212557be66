"""Shared fixtures: real Dagster instances, real MLflow stores and real files, in temp folders."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from ml_platform.settings import use_passive_openmp
from ml_platform.specs import SPEC_DIR, PipelineSpec, load_spec

use_passive_openmp()  # the test processes fit models too

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri() -> Iterator[None]:
    """MLflow (and dagster-mlflow) leave `MLFLOW_TRACKING_URI` in `os.environ` after a run, and
    `settings.mlflow_uri` honours it: without this a later test in the same worker would talk to
    an earlier test's store."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def spec() -> PipelineSpec:
    return load_spec(SPEC_DIR / "sales_forecast.yaml", REPO_ROOT)


def make_platform_root(path: Path) -> Path:
    """A project root with its own params.yaml, landing folder and state (no repo state used)."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "params.yaml", path / "params.yaml")
    return path


def generate(root: Path, spec: PipelineSpec, *, stores: int = 4, days: int = 150, **kw) -> list:
    from ml_platform.core.datagen import GeneratorConfig, write_landing_files

    config = GeneratorConfig(
        stores=stores,
        days=days,
        start=kw.pop("start", spec.landing.start_date),
        holidays=tuple(spec.features.holidays),
        **kw,
    )
    return write_landing_files(config, root / spec.landing.directory, append=True)


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp project root with its own DAGSTER_HOME and MLflow store."""
    root = make_platform_root(tmp_path / "project")
    monkeypatch.setenv("DAGSTER_HOME", str(root / ".ml_platform" / "dagster_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("ML_PLATFORM_ROOT", str(root))
    monkeypatch.chdir(root)
    yield root


@contextlib.contextmanager
def activated(root: Path) -> Iterator[Path]:
    """Point this process at a project root (DAGSTER_HOME, ML_PLATFORM_ROOT, cwd), then restore."""
    keys = ("DAGSTER_HOME", "ML_PLATFORM_ROOT", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["DAGSTER_HOME"] = str(root / ".ml_platform" / "dagster_home")
    os.environ["ML_PLATFORM_ROOT"] = str(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    cwd = Path.cwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def trained_platform(tmp_path_factory: pytest.TempPathFactory, spec: PipelineSpec) -> Path:
    """One small platform taken through the whole demo once and shared by read-only tests."""
    from ml_platform.demo import run_demo

    root = make_platform_root(tmp_path_factory.mktemp("trained") / "project")
    with activated(root):
        generate(root, spec, stores=4, days=160, seed=3)
        assert run_demo(root, spec.name) == 0
    return root


def day(offset: int, spec: PipelineSpec) -> str:
    from datetime import timedelta

    return (spec.landing.start_date + timedelta(days=offset)).isoformat()


__all__ = ["date", "day", "generate", "make_platform_root"]


@pytest.fixture
def platform(trained_platform: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shared trained platform, with this process pointed at it."""
    monkeypatch.setenv("DAGSTER_HOME", str(trained_platform / ".ml_platform" / "dagster_home"))
    monkeypatch.setenv("ML_PLATFORM_ROOT", str(trained_platform))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(trained_platform)
    return trained_platform


def run_job(root: Path, job_name: str, partition: str | None = None, selection=None):
    """Run a job in process against the root's persistent instance, as the demo and UI do."""
    import dagster as dg

    from ml_platform.assemble import build_definitions

    defs = build_definitions(root)
    tags = {"dagster/partition": partition} if partition else {}
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=dg.DagsterInstance.get(),
        tags=tags,
        partition_key=partition,
        asset_selection=selection,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    """Poll until the predicate returns something truthy; fail with `what` at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def failure_messages(result) -> str:
    return "\n".join(
        event.step_failure_data.error.message
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data
    )


def registry_for(root: Path):
    """The registry of this project's own embedded store, whatever MLFLOW_TRACKING_URI a
    session fixture or an earlier MLflow call left in this worker's environment."""
    from ml_platform.layout import StateLayout
    from ml_platform.resources.registry import ModelRegistry

    uri = f"sqlite:///{StateLayout(root).mlflow_db}"
    return ModelRegistry(tracking_uri=uri, artifact_root=str(root / "unused"))
