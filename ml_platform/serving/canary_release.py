"""One canary analysis step against the registry: scrape, judge, then ramp, promote or roll back.

No dagster here: the `<pipeline>_canary` sensor calls `analyse` once per interval and keeps the
returned `CanaryCursor` as its cursor. The registry is the only thing it changes, and it changes
it in an order that is safe to repeat if the sensor dies half-way:

- ramp: the `ml_platform.canary_weight` tag moves to the next step;
- promote: `previous` -> old champion, `champion` -> canary, then the canary alias goes;
- roll back: the weight goes to 0, the canary alias goes, an alert is written; the champion is
  never touched.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_platform.automation.alerts import Alert, alerts_path, append_alert, truncate
from ml_platform.core import training
from ml_platform.core.canary import (
    CanaryPolicy,
    CanaryState,
    OnlineMae,
    Phase,
    VariantStats,
    advance,
    mae_for,
    online_mae,
    parse_metrics,
    run_checks,
    subtract,
)
from ml_platform.core.json_lines import iso_time
from ml_platform.resources.audit import record_alias_change
from ml_platform.serving.loader import CANARY, CANARY_WEIGHT_TAG, CHAMPION, PREVIOUS
from ml_platform.serving.metrics import SHADOW
from ml_platform.serving.prediction_log import read_prediction_log
from ml_platform.specs import PipelineSpec

LabelLoader = Callable[[list[str]], pd.DataFrame]


@dataclass
class CanaryCursor:
    """Sensor cursor: the release under analysis and the canary's counters at the last scrape
    (the history of steps is in the audit trail, not here)."""

    state: CanaryState | None = None
    last_scrape: dict | None = None
    started: str | None = None  # ISO time the analysis of this version began

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": None if self.state is None else json.loads(self.state.to_json()),
                "last_scrape": self.last_scrape,
                "started": self.started,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> CanaryCursor:
        if not text:
            return cls()
        data = json.loads(text)
        state = (
            None if data.get("state") is None else CanaryState.from_json(json.dumps(data["state"]))
        )
        return cls(state, data.get("last_scrape"), data.get("started"))


def policy_for(spec: PipelineSpec) -> CanaryPolicy:
    c = spec.deployment.canary
    return CanaryPolicy(
        step_weights=tuple(c.step_weights),
        failure_threshold=c.failure_threshold,
        max_inconclusive=c.max_inconclusive,
        min_requests=c.min_requests,
        max_error_rate=c.max_error_rate,
        max_p99_latency_ms=c.max_p99_latency_ms,
        max_prediction_psi=c.max_prediction_psi,
        min_predictions=c.min_predictions,
        max_mae_ratio=c.max_mae_ratio,
        min_labelled=c.min_labelled,
    )


def release_canary(client: MlflowClient, spec: PipelineSpec, version: str) -> None:
    """Give `version` the canary alias at the first step weight (what promotion does in canary
    mode). The weight goes first, so the app never routes by a stale one."""
    weight = spec.deployment.canary.step_weights[0]
    client.set_registered_model_tag(spec.name, CANARY_WEIGHT_TAG, str(weight))
    client.set_registered_model_alias(spec.name, CANARY, str(version))


def scrape(url: str, timeout: float = 5.0) -> str | None:
    """The app's `/metrics` text, or None when it cannot be reached (an inconclusive interval)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None


def analyse(
    spec: PipelineSpec,
    client: MlflowClient,
    root: Path,
    cursor: CanaryCursor,
    metrics_text: str | None,
    labels: LabelLoader | None = None,
) -> tuple[CanaryCursor, str]:
    """Run one analysis; returns the new cursor and a one-line summary of what happened."""
    name = spec.name
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException:
        return CanaryCursor(), f"no registered model {name!r} yet"
    canary, champion = aliases.get(CANARY), aliases.get(CHAMPION)
    if canary is None or champion is None:
        return CanaryCursor(), "no canary in flight"
    policy = policy_for(spec)
    if cursor.state is None or cursor.state.version != str(canary):
        cursor = CanaryCursor(CanaryState(version=str(canary)), None, iso_time())
    state = cursor.state
    scraped = _parse(metrics_text, name)
    if scraped is None:  # unreachable, or not Prometheus text (a proxy's error page): no evidence
        metrics_text = None
        scraped = {}
    canary_now = scraped.get((CANARY, str(canary)), VariantStats())
    before = None if cursor.last_scrape is None else VariantStats.from_dict(cursor.last_scrape)
    results = (
        run_checks(
            subtract(canary_now, before),
            # Same entities as the canary when the app shadows them, else all champion traffic.
            scraped.get((SHADOW, str(champion)))
            or scraped.get((CHAMPION, str(champion)), VariantStats()),
            policy,
            _online_mae(spec, root, labels, str(canary), str(champion), cursor.started),
            canary_cumulative=canary_now,
        )
        if metrics_text is not None
        else []
    )
    new = advance(state, results, policy)
    summary = _act(spec, client, root, state, new, policy, str(champion), results, metrics_text)
    return CanaryCursor(new, canary_now.to_dict(), cursor.started), summary


def _parse(metrics_text: str | None, pipeline: str) -> dict | None:
    if metrics_text is None:
        return None
    try:
        return parse_metrics(metrics_text, pipeline)
    except ValueError:
        return None


def _act(spec, client, root, old, new, policy, champion, results, metrics_text) -> str:
    name, version = spec.name, new.version
    checks = [
        {
            "name": r.name,
            "status": str(r.status),
            "value": r.value,
            "limit": r.limit,
            "detail": r.detail,
        }
        for r in results
    ]
    evidence = {
        "checks": checks,
        "step": new.step,
        "failed": new.failed,
        "inconclusive": new.inconclusive,
        "scraped": metrics_text is not None,
    }
    audit = Path(root) / ".ml_platform" / "audit" / f"{name}.jsonl"
    if new.phase == Phase.PROMOTE:
        client.set_registered_model_alias(name, PREVIOUS, champion)
        client.set_registered_model_alias(name, CHAMPION, version)
        client.delete_registered_model_alias(name, CANARY)
        client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, "0")
        reason = f"canary v{version} passed every step {list(policy.step_weights)}: promoted"
        record_alias_change(audit, name, CHAMPION, champion, version, reason, evidence, None)
        return reason
    if new.phase == Phase.ROLLBACK:
        client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, "0")
        client.delete_registered_model_alias(name, CANARY)
        reason = f"canary v{version} {new.reason}; champion v{champion} unchanged"
        record_alias_change(audit, name, CANARY, version, "none", reason, evidence, None)
        alert = Alert(
            time=iso_time(),
            pipeline=name,
            asset=None,
            run_id=None,
            job=f"{name}_canary",
            reason=truncate(reason),
        )
        append_alert(alerts_path(root), alert)
        return reason
    weight = new.weight(policy)
    if weight != old.weight(policy):
        client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, str(weight))
    reason = f"canary v{version} at {weight} %: {new.reason or 'analysis passed'}"
    record_alias_change(audit, name, CANARY, version, version, reason, evidence, None)
    return reason


def _online_mae(spec, root, labels, canary, champion, started) -> OnlineMae | None:
    """Online loss of both variants (MAE, or log loss for a classifier) on predictions made since
    this canary's analysis began."""
    if labels is None:
        return None
    folder = Path(root) / ".ml_platform" / "serving" / "predictions"
    log = read_prediction_log(folder, spec.name, since=started)
    if started is not None and not log.empty:
        log = log[log["time"] >= started]
    if log.empty:
        return None
    days = sorted(set(log["prediction_for"]))
    truth = labels(days)
    if truth.empty:
        return None

    def loss(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return training.row_losses(labels, predictions, spec)  # log loss for a classifier

    table = online_mae(log, truth, spec.entity_keys, spec.target, loss=loss)
    return mae_for(table, canary, champion)
