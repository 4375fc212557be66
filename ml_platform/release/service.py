"""The one place that moves release aliases: start, ramp, promote and roll back a model version.

The promotion asset, the canary sensor and the CLI all call `ReleaseService`, so every move
writes the registry in the same safe order, appends the same audit record and raises the same
alert. The registry holds the state of a release (model-level tags), read by the server and the
sensor alike:

- `ml_platform.canary_weight`: the canary's share of requests; written *before* the alias moves,
  so the server never routes by a stale weight;
- `ml_platform.canary_policy`: the `CanaryPolicy` of the release, as JSON (weights, limits,
  affinity, and the offline prediction shift the shift check is calibrated on);
- `ml_platform.canary_release`: `<version>@<start time>`: a new value means a fresh analysis;
- `ml_platform.canary_paused`: an operator's hold.

A rolled-back version gets the version tag `ml_platform.rolled_back`; the automatic path never
releases it again (a retrain with the same data, code and spec reuses the version), only an
operator's `ml-platform canary start`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_platform.core.canary import (
    PAUSED_TAG,
    POLICY_TAG,
    RELEASE_TAG,
    ROLLED_BACK_TAG,
    CanaryPolicy,
)
from ml_platform.core.json_lines import iso_time, read_json_lines
from ml_platform.resources.audit import record_alias_change
from ml_platform.resources.registry import CANARY, CANARY_WEIGHT_TAG, CHAMPION, PREVIOUS
from ml_platform.specs import PipelineSpec

OFFLINE_SHIFT_TAG = "ml_platform.offline_shift"  # model version: shift vs champion on holdout
Notify = Callable[[str, str, str], None]  # (pipeline, job, reason): raise an alert


class ReleaseRefused(RuntimeError):
    """The release cannot be made as asked (no such alias, a rolled-back version, ...)."""


def policy_for(spec: PipelineSpec, offline_shift: float | None = None) -> CanaryPolicy:
    """The spec's canary settings as the core's policy: the only place one is built from the
    other (the spec validates the same rules, e.g. the last step is 100)."""
    c = spec.deployment.canary
    interval = max(c.interval_seconds, 1)
    return CanaryPolicy(
        step_weights=tuple(c.step_weights),
        failure_threshold=c.failure_threshold,
        max_inconclusive=c.max_inconclusive,
        min_requests=c.min_requests,
        max_error_rate=c.max_error_rate,
        max_p99_latency_ms=c.max_p99_latency_ms,
        max_prediction_shift=c.max_prediction_shift,
        shift_tolerance=c.shift_tolerance,
        offline_shift=offline_shift,
        min_predictions=c.min_predictions,
        max_mae_ratio=c.max_mae_ratio,
        min_labelled=c.min_labelled,
        wait_for_labels=c.wait_for_labels,
        bake_analyses=-(-c.bake_seconds // interval),
        affinity=c.affinity,
        min_sticky_entities=c.min_sticky_entities,
    )


class ReleaseService:
    """Alias moves of one registry with their audit record (and alert, on a rollback)."""

    def __init__(self, client: MlflowClient, root: Path, notify: Notify | None = None) -> None:
        self.client = client
        self.root = Path(root)
        self.notify = notify

    def audit_path(self, name: str) -> Path:
        return self.root / ".ml_platform" / "audit" / f"{name}.jsonl"

    def audit(self, name: str) -> list[dict]:
        return read_json_lines(self.audit_path(name))

    def aliases(self, name: str) -> dict[str, str]:
        try:
            found = self.client.get_registered_model(name).aliases or {}
        except MlflowException:
            return {}
        return {alias: str(version) for alias, version in found.items()}

    def tags(self, name: str) -> dict[str, str]:
        try:
            return dict(self.client.get_registered_model(name).tags or {})
        except MlflowException:
            return {}

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, str(version)).tags or {})

    def policy(self, name: str, spec: PipelineSpec | None = None) -> CanaryPolicy:
        """The policy of the release in flight, as written when it started (else the spec's)."""
        text = self.tags(name).get(POLICY_TAG)
        if text:
            try:
                return CanaryPolicy.from_json(text)
            except (ValueError, TypeError):
                pass
        return policy_for(spec) if spec is not None else CanaryPolicy()

    def _record(self, name, alias, before, after, reason, evidence, run_id=None) -> dict:
        return record_alias_change(
            self.audit_path(name), name, alias, before, after, reason, evidence, run_id
        )

    # -- the automatic path (promotion asset) and the operator's --------------------------------

    def promote_direct(
        self, name: str, version: str, reason: str, evidence: dict, run_id: str | None = None
    ) -> None:
        """Direct mode (or a first model): `previous` → old champion, `champion` → version."""
        incumbent = self.aliases(name).get(CHAMPION)
        if incumbent is not None and incumbent != str(version):
            self.client.set_registered_model_alias(name, PREVIOUS, incumbent)
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        self._record(name, CHAMPION, incumbent, version, reason, evidence, run_id)

    def start(
        self,
        spec: PipelineSpec,
        version: str,
        reason: str,
        evidence: dict | None = None,
        run_id: str | None = None,
        *,
        operator: bool = False,
    ) -> str:
        """Release `version` as canary at the first step, with a fresh analysis.

        A version rolled back before is refused unless an operator asks (`operator=True` clears
        the mark). The weight and policy go first, the alias last.
        """
        name, version = spec.name, str(version)
        tags = self.version_tags(name, version)
        if tags.get(ROLLED_BACK_TAG) and not operator:
            raise ReleaseRefused(
                f"{name} v{version} was rolled back ({tags[ROLLED_BACK_TAG]}); not released "
                f"again automatically: `ml-platform canary start {name} --version {version}`"
            )
        if self.aliases(name).get(CHAMPION) == version:
            raise ReleaseRefused(f"{name} v{version} is the champion already")
        if operator and ROLLED_BACK_TAG in tags:
            self.client.delete_model_version_tag(name, version, ROLLED_BACK_TAG)
        shift = tags.get(OFFLINE_SHIFT_TAG)
        policy = policy_for(spec, float(shift) if shift else None)
        previous = self.aliases(name).get(CANARY)
        self.client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, str(policy.step_weights[0]))
        self.client.set_registered_model_tag(name, POLICY_TAG, policy.to_json())
        self.client.set_registered_model_tag(name, PAUSED_TAG, "false")
        self.client.set_registered_model_tag(name, RELEASE_TAG, f"{version}@{iso_time()}")
        self.client.set_registered_model_alias(name, CANARY, version)
        evidence = {**(evidence or {}), "policy": policy.to_json(), "operator": operator}
        self._record(name, CANARY, previous, version, reason, evidence, run_id)
        return f"canary v{version} of {name} released at {policy.step_weights[0]} %"

    def ramp(self, name: str, version: str, weight: int, reason: str, evidence: dict) -> None:
        self.client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, str(weight))
        self._record(name, CANARY, version, version, reason, {**evidence, "kind": "ramp"})

    def record_analysis(self, name: str, version: str, reason: str, evidence: dict) -> None:
        """An analysis that moved nothing: in the audit trail, shown by `history --analyses`."""
        self._record(name, CANARY, version, version, reason, {**evidence, "kind": "analysis"})

    def promote(self, name: str, version: str, reason: str, evidence: dict) -> str:
        """The canary becomes champion; safe to repeat if interrupted half-way."""
        champion = self.aliases(name).get(CHAMPION)
        if champion is not None and champion != str(version):
            self.client.set_registered_model_alias(name, PREVIOUS, champion)
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        self._end_canary(name)
        self._record(name, CHAMPION, champion, version, reason, evidence)
        return reason

    def roll_back(self, name: str, version: str, reason: str, evidence: dict) -> str:
        """The champion answers everything again; the version is marked so it is not re-released
        automatically, and an alert is raised. The champion is never touched."""
        self.client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, "0")
        self.client.set_model_version_tag(name, str(version), ROLLED_BACK_TAG, reason[:500])
        if self.aliases(name).get(CANARY) == str(version):
            self.client.delete_registered_model_alias(name, CANARY)
        self._record(name, CANARY, version, "none", reason, evidence)
        if self.notify is not None:
            self.notify(name, f"{name}_canary", reason)
        return reason

    def _end_canary(self, name: str) -> None:
        self.client.set_registered_model_tag(name, CANARY_WEIGHT_TAG, "0")
        if CANARY in self.aliases(name):
            self.client.delete_registered_model_alias(name, CANARY)

    def set_paused(self, name: str, paused: bool, reason: str) -> str:
        canary = self.aliases(name).get(CANARY)
        if canary is None:
            raise ReleaseRefused(f"{name} has no canary in flight")
        self.client.set_registered_model_tag(name, PAUSED_TAG, str(paused).lower())
        word = "paused" if paused else "resumed"
        self.record_analysis(name, canary, f"operator {word} canary v{canary}: {reason}", {})
        return f"canary v{canary} of {name} {word}"

    def rollback_champion(self, name: str, to_version: str | None, reason: str) -> str:
        """Move `champion` back to `to_version` (default: the `previous` alias); idempotent."""
        aliases = self.aliases(name)
        current = aliases.get(CHAMPION)
        if current is None:
            raise LookupError(f"{name} has no champion to roll back")
        if to_version is None:
            to_version = aliases.get(PREVIOUS)
            if to_version is None:
                raise LookupError(f"{name} has no previous champion; pass --to VERSION")
        target = str(self.client.get_model_version(name, str(to_version)).version)
        if current == target:
            return f"champion of {name} is already v{target}; nothing to do"
        self.client.set_registered_model_alias(name, CHAMPION, target)
        self.client.set_registered_model_alias(name, PREVIOUS, current)
        self.client.set_model_version_tag(name, target, "rollback.reason", reason[:5000])
        evidence = {"rolled_back_from": current}
        self._record(name, CHAMPION, current, target, f"rollback: {reason}", evidence)
        return f"champion of {name}: v{current} → v{target} ({reason})"

    def status(self, name: str) -> dict[str, Any]:
        """What is serving and where the release stands, from the registry and the audit trail."""
        aliases, tags = self.aliases(name), self.tags(name)
        canary = aliases.get(CANARY)
        last = next(
            (e for e in reversed(self.audit(name)) if e.get("alias") == CANARY),
            None,
        )
        policy = self.policy(name)
        return {
            "pipeline": name,
            "champion": aliases.get(CHAMPION),
            "previous": aliases.get(PREVIOUS),
            "canary": canary,
            "weight": float(tags.get(CANARY_WEIGHT_TAG, 0) or 0) if canary else 0.0,
            "paused": tags.get(PAUSED_TAG) == "true",
            "release": tags.get(RELEASE_TAG) if canary else None,
            "steps": list(policy.step_weights),
            "affinity": policy.affinity,
            "last_event": None if last is None else {k: last[k] for k in ("time", "reason")},
        }
