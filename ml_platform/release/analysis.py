"""One canary analysis against the registry: scrape, judge, then ramp, promote or roll back.

No dagster here: the `<pipeline>_canary` sensor calls `analyse` once per interval and keeps the
returned `CanaryCursor` as its cursor; every move goes through `ReleaseService`.

- The policy is the one the release wrote to the registry, not the spec this process loaded.
- A new release (the registry's `ml_platform.canary_release` tag changed) starts from a baseline
  scrape: the first readable scrape is only recorded, so counters from an earlier release of the
  same version are never judged.
- Error rate and latency come from the interval's `/metrics` deltas; the prediction shift and
  the online loss from the prediction log, where each canary answer sits beside the shadow
  champion's answer for the same request.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_platform.core import training
from ml_platform.core.canary import (
    PAUSED_TAG,
    RELEASE_TAG,
    CanaryPolicy,
    CanaryState,
    CheckResult,
    OnlineMae,
    Paired,
    Phase,
    VariantStats,
    advance,
    paired_online_loss,
    paired_predictions,
    parse_metrics,
    run_checks,
    subtract,
)
from ml_platform.release.service import Notify, ReleaseService
from ml_platform.resources.registry import CANARY, CHAMPION
from ml_platform.specs import PipelineSpec

LabelLoader = Callable[[list[str]], pd.DataFrame]
PredictionLoader = Callable[[str | None], pd.DataFrame]  # logged predictions since an ISO time


@dataclass
class CanaryCursor:
    """Sensor cursor: the release under analysis and the canary's counters at the last scrape
    (the history of steps is in the audit trail, not here)."""

    state: CanaryState | None = None
    last_scrape: dict | None = None
    started: str | None = None  # ISO time the release began
    release: str | None = None  # the registry's release id this cursor belongs to
    checks: list[dict] = field(default_factory=list)  # the last analysis, for the UI

    def to_json(self) -> str:
        return json.dumps(
            {
                "state": None if self.state is None else json.loads(self.state.to_json()),
                "last_scrape": self.last_scrape,
                "started": self.started,
                "release": self.release,
                "checks": self.checks,
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
        return cls(
            state,
            data.get("last_scrape"),
            data.get("started"),
            data.get("release"),
            data.get("checks") or [],
        )


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
    notify: Notify | None = None,
    predictions: PredictionLoader | None = None,
) -> tuple[CanaryCursor, str]:
    """Run one analysis; returns the new cursor and a one-line summary of what happened."""
    name = spec.name
    service = ReleaseService(client, root, notify)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return CanaryCursor(), f"no registered model {name!r} yet"
    aliases, tags = registered.aliases or {}, registered.tags or {}
    canary, champion = aliases.get(CANARY), aliases.get(CHAMPION)
    if canary is None or champion is None:
        return CanaryCursor(), "no canary in flight"
    canary = str(canary)
    policy = service.policy(name, spec)
    release = tags.get(RELEASE_TAG) or f"{canary}@unknown"
    if cursor.state is None or cursor.release != release or cursor.state.version != canary:
        started = release.partition("@")[2]
        cursor = CanaryCursor(CanaryState(version=canary), None, _iso_or_none(started), release)
    scraped = _parse(metrics_text, name)
    if scraped is None:  # unreachable, or not Prometheus text (a proxy's error page): no evidence
        metrics_text = None
    canary_now = (scraped or {}).get((CANARY, canary), VariantStats())
    if tags.get(PAUSED_TAG) == "true":
        last = canary_now.to_dict() if scraped is not None else cursor.last_scrape
        return replace(cursor, last_scrape=last), f"canary v{canary} paused by an operator"
    if scraped is not None and cursor.last_scrape is None:
        cursor = replace(cursor, last_scrape=canary_now.to_dict())
        return cursor, f"canary v{canary}: baseline taken at the start of release {release}"
    results: list[CheckResult] = []
    if scraped is not None:
        before = VariantStats.from_dict(cursor.last_scrape)
        paired, mae = _paired(spec, predictions, labels, canary, cursor.started)
        results = run_checks(subtract(canary_now, before), policy, mae, paired=paired)
    state = cursor.state
    new = advance(state, results, policy)
    checks = [_check_dict(r) for r in results]
    summary = _act(service, name, state, new, policy, checks, metrics_text is not None)
    last = canary_now.to_dict() if scraped is not None else cursor.last_scrape
    return replace(cursor, state=new, last_scrape=last, checks=checks), summary


def _iso_or_none(text: str) -> str | None:
    return text if text[:4].isdigit() else None


def _parse(metrics_text: str | None, pipeline: str) -> dict | None:
    if metrics_text is None:
        return None
    try:
        return parse_metrics(metrics_text, pipeline)
    except ValueError:
        return None


def _check_dict(r: CheckResult) -> dict:
    value = r.value if r.value is None or np.isfinite(r.value) else str(r.value)
    return {
        "name": r.name,
        "status": str(r.status),
        "value": value,
        "limit": r.limit,
        "detail": r.detail,
    }


def _act(service: ReleaseService, name, old, new, policy: CanaryPolicy, checks, scraped) -> str:
    version = new.version
    evidence = {
        "checks": checks,
        "step": new.step,
        "failed": new.failed,
        "inconclusive": new.inconclusive,
        "scraped": scraped,
    }
    if new.phase == Phase.PROMOTE:
        reason = f"canary v{version} passed every step {list(policy.step_weights)}: promoted"
        return service.promote(name, version, reason, evidence)
    if new.phase == Phase.ROLLBACK:
        champion = service.aliases(name).get(CHAMPION)
        reason = f"canary v{version} {new.reason}; champion v{champion} unchanged"
        return service.roll_back(name, version, reason, evidence)
    weight = new.weight(policy)
    reason = f"canary v{version} at {weight} %: {new.reason or 'analysis passed'}"
    if weight != old.weight(policy):
        service.ramp(name, version, weight, reason, evidence)
    else:
        service.record_analysis(name, version, reason, evidence)
    return reason


def _paired(spec, predictions, labels, canary: str, started) -> tuple[Paired, OnlineMae | None]:
    """The canary's answers beside the shadow champion's since the release began, and the
    online loss of both on the labelled ones (MAE, or log loss for a classifier)."""
    log = pd.DataFrame() if predictions is None else predictions(started)
    if started is not None and not log.empty:
        log = log[log["time"] >= started]
    paired = paired_predictions(log, canary)
    if labels is None or log.empty:
        return paired, None
    truth = labels(sorted(set(log["prediction_for"])))
    if truth.empty:
        return paired, None

    def loss(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        return training.row_losses(actual, predicted, spec)

    return paired, paired_online_loss(log, truth, spec.entity_keys, spec.target, canary, loss)
