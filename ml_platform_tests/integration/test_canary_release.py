"""The release service and one canary analysis against a real MLflow registry (SQLite in a temp
dir); the versions are registered without artifacts because nothing here loads a model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prometheus_client import CollectorRegistry, Counter, generate_latest

from ml_platform.automation.alerts import alerts_path
from ml_platform.automation.canary_sensor import alert_sink
from ml_platform.core.canary import POLICY_TAG, REQUESTS, ROLLED_BACK_TAG, CanaryPolicy
from ml_platform.core.json_lines import read_json_lines
from ml_platform.lineage import canary, format_history, history, outside_moves
from ml_platform.names import CANARY, CANARY_WEIGHT_TAG, CHAMPION, PREVIOUS
from ml_platform.release import ReleaseRefused, ReleaseService
from ml_platform.release.analysis import CanaryCursor, analyse
from ml_platform.serving.deployment import canary_weight, release_policy


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store migrated once: creating one costs seconds, copying it nothing."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def registry(tmp_path: Path, spec, empty_store: Path, monkeypatch):
    """The platform's default registry under `tmp_path`, so the CLI functions find it too."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / ".ml_platform" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(empty_store, db)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.create_registered_model(spec.name)
    for n in (1, 2, 3):
        (tmp_path / f"m{n}").mkdir()
        client.create_model_version(spec.name, source=str(tmp_path / f"m{n}"))
    client.set_registered_model_alias(spec.name, CHAMPION, "1")
    canary_spec = spec.deployment.canary.model_copy(
        update={"max_inconclusive": 2, "affinity": "request"}
    )
    spec = spec.model_copy(
        update={"deployment": spec.deployment.model_copy(update={"canary": canary_spec})}
    )
    service = ReleaseService(client, tmp_path, alert_sink(tmp_path))
    service.start(spec, "2", "test release")
    return client, spec, tmp_path


def scrape_with(canary_requests: int, version: str = "2") -> str:
    registry = CollectorRegistry()
    labels = ("pipeline", "variant", "version")
    requests = Counter(REQUESTS.removesuffix("_total"), "r", labels, registry=registry)
    requests.labels("sales_forecast", "canary", version).inc(canary_requests)
    return generate_latest(registry).decode()


@pytest.mark.parametrize(
    "scrape",
    [None, "<html>502 Bad Gateway</html>", "not prometheus {"],
    ids=["down", "html", "junk"],
)
def test_unreadable_metrics_hold_then_roll_back_without_touching_the_champion(
    registry, scrape: str | None
) -> None:
    client, spec, root = registry
    notify = alert_sink(root)
    cursor, summary = analyse(spec, client, root, CanaryCursor(), scrape, notify=notify)
    assert "holding at 5 %" in summary and cursor.state.inconclusive == 1
    assert client.get_registered_model(spec.name).aliases[CANARY] == 2
    cursor, summary = analyse(spec, client, root, cursor, scrape, notify=notify)
    assert "not enough canary traffic" in summary
    model = client.get_registered_model(spec.name)
    assert model.aliases == {CHAMPION: 1} and model.tags[CANARY_WEIGHT_TAG] == "0"
    assert any("canary v2" in a["reason"] for a in read_json_lines(alerts_path(root)))
    assert ROLLED_BACK_TAG in client.get_model_version(spec.name, "2").tags


def test_no_canary_in_flight_is_a_quiet_tick(registry) -> None:
    client, spec, root = registry
    client.delete_registered_model_alias(spec.name, CANARY)
    cursor, summary = analyse(spec, client, root, CanaryCursor(), None)
    assert summary == "no canary in flight" and cursor.state is None


def test_each_release_is_judged_from_a_baseline_taken_at_its_start(registry) -> None:
    client, spec, root = registry
    lifetime = scrape_with(500)  # an earlier release of v2 served 500 requests
    cursor, summary = analyse(spec, client, root, CanaryCursor(), lifetime)
    assert "baseline taken" in summary and cursor.state.inconclusive == 0
    cursor, summary = analyse(spec, client, root, cursor, lifetime)
    assert "only 0 canary requests in the interval" in summary  # not the 500 of before
    ReleaseService(client, root).start(spec, "3", "another release")
    cursor, summary = analyse(spec, client, root, cursor, scrape_with(900, "3"))
    assert "baseline taken" in summary and cursor.state.version == "3"


def test_registry_is_the_one_source_of_weight_and_policy(registry) -> None:
    client, spec, root = registry
    tags = client.get_registered_model(spec.name).tags
    assert canary_weight(tags) == 5.0
    policy = release_policy(tags)
    assert policy == CanaryPolicy.from_json(tags[POLICY_TAG]) and policy.affinity == "request"
    edited = spec.deployment.canary.model_copy(update={"step_weights": [10, 100]})
    later = spec.model_copy(
        update={"deployment": spec.deployment.model_copy(update={"canary": edited})}
    )
    # A spec edit after the release started changes neither the server's nor the sensor's view.
    assert ReleaseService(client, root).policy(later.name, later).step_weights == (5, 25, 50, 100)
    _, summary = analyse(later, client, root, CanaryCursor(), None)
    assert "holding at 5 %" in summary


def test_rolled_back_version_is_not_released_again_unless_an_operator_asks(registry) -> None:
    client, spec, root = registry
    service = ReleaseService(client, root, alert_sink(root))
    service.roll_back(spec.name, "2", "canary v2 broke", {})
    with pytest.raises(ReleaseRefused, match="rolled back"):
        service.start(spec, "2", "the same version from an unchanged retrain")
    print(canary(root, spec, "start", "2", "fixed the feature store"))
    assert client.get_registered_model(spec.name).aliases[CANARY] == 2
    assert ROLLED_BACK_TAG not in client.get_model_version(spec.name, "2").tags


def test_operator_commands_are_audited_and_history_shows_moves_and_outside_changes(
    registry,
) -> None:
    client, spec, root = registry
    assert canary(root, spec, "status", None, "")["canary"] == "2"
    assert "paused" in canary(root, spec, "pause", None, "looking at a dashboard")
    _, summary = analyse(spec, client, root, CanaryCursor(), scrape_with(10))
    assert "paused by an operator" in summary
    canary(root, spec, "resume", "2", "done")
    canary(root, spec, "promote", "2", "looks fine")
    aliases = client.get_registered_model(spec.name).aliases
    assert aliases[CHAMPION] == 2 and aliases[PREVIOUS] == 1 and CANARY not in aliases
    with pytest.raises(ReleaseRefused, match="no canary"):
        canary(root, spec, "abort", None, "nothing to abort")
    moves = history(root, spec)
    assert [(e["alias"], e["to_version"]) for e in moves] == [(CANARY, "2"), (CHAMPION, "2")]
    everything = history(root, spec, analyses=True)
    assert len(everything) > len(moves) and any("paused" in e["reason"] for e in everything)
    assert outside_moves(root, spec) == []
    client.set_registered_model_alias(spec.name, CHAMPION, "3")  # by hand, in MLflow
    notes = outside_moves(root, spec)
    assert notes and "champion is v3 in the registry" in notes[0]
    assert "moved outside the platform" in format_history(moves, notes)
