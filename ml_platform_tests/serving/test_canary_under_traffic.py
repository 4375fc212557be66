"""Canary releases under synthetic traffic, judged by the real `<pipeline>_canary` sensor.

A bad challenger (trained on shuffled targets) is rolled back within the configured number of
analyses; a good one (the same recipe retrained) is promoted through every step. Traffic runs the
whole time and no request may fail. The releases move the champion, so this file trains its own
platform and starts its own server: it never changes what other serving tests see, whatever order
or worker they run in.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest

from ml_platform.automation.alerts import alerts_path
from ml_platform.automation.canary_sensor import build_canary_sensor
from ml_platform.core import training
from ml_platform.core.json_lines import read_json_lines
from ml_platform.lineage import history
from ml_platform.release import ReleaseService
from ml_platform.serving.loader import CANARY, CANARY_WEIGHT_TAG, CHAMPION, PREVIOUS
from ml_platform_tests.conftest import activated, registry_for
from ml_platform_tests.serving.conftest import all_entities, running_server, trained_serving_root

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ANALYSIS_SECONDS = 1.5


class Traffic:
    """Round-robin single-entity requests on a thread; every status code is kept."""

    def __init__(self, url: str, entities: list[dict[str, str]]) -> None:
        self.url, self.entities = url, entities
        self.statuses: Counter[int] = Counter()
        self.variants: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                entity = self.entities[i % len(self.entities)]
                response = client.post("/v1/sales_forecast/predict", json={"entities": [entity]})
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.variants[response.json()["predictions"][0]["variant"]] += 1
                i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def register(root: Path, spec, shuffled: bool) -> str:
    """A new registered version from the training set, with the targets shuffled if asked."""
    training_set = pd.read_parquet(root / "data" / spec.name / "training_set.parquet")
    if shuffled:
        labels = training_set[training.LABEL].to_numpy().copy()
        np.random.default_rng(0).shuffle(labels)
        training_set = training_set.assign(**{training.LABEL: labels})
    model = training.fit(training_set, spec)
    registry = registry_for(root)
    experiment = registry.ensure_experiment(spec.name)
    with mlflow_pointed_at(registry.tracking_uri), mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="skops",
            skops_trusted_types=spec.model.skops_trusted_types,
            registered_model_name=spec.name,
        )
    return str(info.registered_model_version)


@contextlib.contextmanager
def mlflow_pointed_at(uri: str) -> Iterator[None]:
    """MLflow's fluent API keeps its URIs process-wide and exports them as env vars (which later
    servers and runs inherit): point them here for the block, then put every bit back."""
    from mlflow.tracking._model_registry import utils as registry_state
    from mlflow.tracking._tracking_service import utils as tracking_state

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (tracking_state._tracking_uri, registry_state._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_state._tracking_uri, registry_state._registry_uri = saved
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_release(root: Path, server: str, spec, version: str, max_analyses: int):
    """Release `version` as canary and tick the sensor until it promotes or rolls back."""
    import time

    sensor = build_canary_sensor(spec)
    client = registry_for(root).client()
    ReleaseService(client, root).start(spec, version, "test release")
    cursor, summaries, weights = None, [], []
    with Traffic(server, all_entities(root, spec)) as traffic:
        for _ in range(max_analyses):
            time.sleep(ANALYSIS_SECONDS)
            with dg.instance_for_test() as instance:
                context = dg.build_sensor_context(instance=instance, cursor=cursor)
                result = sensor(context)
                cursor = result.cursor
            summaries.append(result.skip_reason.skip_message)
            weights.append(client.get_registered_model(spec.name).tags.get(CANARY_WEIGHT_TAG))
            if CANARY not in (client.get_registered_model(spec.name).aliases or {}):
                break
    return summaries, weights, traffic


@pytest.fixture(scope="module")
def canary_root(tmp_path_factory: pytest.TempPathFactory, spec) -> Path:
    """A platform of this file's own: the session's `serving_root` must keep its champion."""
    return trained_serving_root(tmp_path_factory.mktemp("canary") / "project", spec)


@pytest.fixture(scope="module")
def canary_server(canary_root: Path) -> Iterator[str]:
    with running_server(canary_root) as url:
        yield url


@pytest.fixture
def canary_spec(spec):
    """The packaged spec with limits sized for a test's few seconds of traffic."""
    canary = spec.deployment.canary.model_copy(
        update={"interval_seconds": 1, "min_requests": 10, "min_predictions": 20}
    )
    deployment = spec.deployment.model_copy(update={"mode": "canary", "canary": canary})
    return spec.model_copy(update={"deployment": deployment})


def release_new_version(root: Path, server: str, spec, shuffled: bool, max_analyses: int):
    """Register a version and release it as canary under traffic; champion before, aliases after."""
    with activated(root):
        client = registry_for(root).client()
        champion = str(client.get_registered_model(spec.name).aliases[CHAMPION])
        version = register(root, spec, shuffled=shuffled)
        summaries, weights, traffic = run_release(root, server, spec, version, max_analyses)
    aliases = {k: str(v) for k, v in client.get_registered_model(spec.name).aliases.items()}
    return champion, version, aliases, summaries, weights, traffic


def test_bad_canary_is_rolled_back_and_the_champion_never_changes(
    canary_root: Path, canary_server: str, canary_spec, monkeypatch
) -> None:
    monkeypatch.setenv("ML_PLATFORM_SERVING_URL", canary_server)
    threshold = canary_spec.deployment.canary.failure_threshold
    champion, bad, aliases, summaries, weights, traffic = release_new_version(
        canary_root, canary_server, canary_spec, shuffled=True, max_analyses=threshold + 6
    )
    assert aliases[CHAMPION] == champion and CANARY not in aliases, summaries
    assert "rolled back" in summaries[-1] and "prediction_shift" in summaries[-1], summaries
    assert len(summaries) <= threshold + 4, summaries  # a baseline, then a couple to gather
    assert weights[-1] == "0"
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.variants["canary"] > 0, "the canary never served: routing is broken"
    alerts = read_json_lines(alerts_path(canary_root))
    assert any(f"canary v{bad}" in a["reason"] for a in alerts)
    events = [e for e in history(canary_root, canary_spec) if e["to_version"] in (bad, "none")]
    assert events and events[-1]["alias"] == CANARY and events[-1]["to_version"] == "none"


def test_good_canary_is_promoted_through_every_step(
    canary_root: Path, canary_server: str, canary_spec, monkeypatch
) -> None:
    monkeypatch.setenv("ML_PLATFORM_SERVING_URL", canary_server)
    steps = canary_spec.deployment.canary.step_weights
    champion, good, aliases, summaries, weights, traffic = release_new_version(
        canary_root, canary_server, canary_spec, shuffled=False, max_analyses=len(steps) + 8
    )
    assert aliases[CHAMPION] == good and aliases[PREVIOUS] == champion, summaries
    assert CANARY not in aliases
    assert "promoted" in summaries[-1], summaries
    ramp = [int(float(w)) for w in weights[:-1] if w is not None]
    assert [w for w in steps[1:] if w in ramp] == steps[1:], (weights, summaries)
    assert set(traffic.statuses) == {200}, traffic.statuses
    audit = [e for e in history(canary_root, canary_spec) if e["to_version"] == good]
    assert audit[-1]["alias"] == CHAMPION and audit[-1]["from_version"] == champion
