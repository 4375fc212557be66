"""Canary analysis when the serving app cannot be read: no evidence holds, then rolls back.

Real MLflow registry (SQLite in a temp dir); the versions are registered without artifacts
because the analysis never loads a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml_platform.automation.alerts import alerts_path
from ml_platform.core.json_lines import read_json_lines
from ml_platform.names import CANARY, CANARY_WEIGHT_TAG, CHAMPION
from ml_platform.serving.canary_release import CanaryCursor, analyse, release_canary


@pytest.fixture
def registry(tmp_path: Path, spec):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(spec.name)
    for n in (1, 2):
        (tmp_path / f"m{n}").mkdir()
        client.create_model_version(spec.name, source=str(tmp_path / f"m{n}"))
    client.set_registered_model_alias(spec.name, CHAMPION, "1")
    canary = spec.deployment.canary.model_copy(update={"max_inconclusive": 2})
    spec = spec.model_copy(
        update={"deployment": spec.deployment.model_copy(update={"canary": canary})}
    )
    release_canary(client, spec, "2")
    return client, spec, tmp_path


@pytest.mark.parametrize(
    "scrape",
    [None, "<html>502 Bad Gateway</html>", "not prometheus {"],
    ids=["down", "html", "junk"],
)
def test_unreadable_metrics_hold_then_roll_back_without_touching_the_champion(
    registry, scrape: str | None
) -> None:
    client, spec, root = registry
    cursor, summary = analyse(spec, client, root, CanaryCursor(), scrape)
    assert "holding at 5 %" in summary and cursor.state.inconclusive == 1
    assert client.get_registered_model(spec.name).aliases[CANARY] == 2
    cursor, summary = analyse(spec, client, root, cursor, scrape)
    assert "not enough canary traffic" in summary
    model = client.get_registered_model(spec.name)
    assert model.aliases == {CHAMPION: 1} and model.tags[CANARY_WEIGHT_TAG] == "0"
    assert any("canary v2" in a["reason"] for a in read_json_lines(alerts_path(root)))


def test_no_canary_in_flight_is_a_quiet_tick(registry) -> None:
    client, spec, root = registry
    client.delete_registered_model_alias(spec.name, CANARY)
    cursor, summary = analyse(spec, client, root, CanaryCursor(), None)
    assert summary == "no canary in flight" and cursor.state is None
