"""Audit-trail commands: `history`, `rollback`, `canary …` and `reproduce` of a pipeline.

They answer "which data, code and parameters made the model serving now?", put the previous
champion back in one command, and retrain any version from its recorded training data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ml_platform.core import training
from ml_platform.release import ReleaseRefused, ReleaseService
from ml_platform.resources.dvc import DvcError, DvcLedger
from ml_platform.resources.registry import CANARY, CHALLENGER, CHAMPION, PREVIOUS, ModelRegistry
from ml_platform.specs import PipelineSpec


def _registry(root: Path) -> ModelRegistry:
    from ml_platform.settings import mlflow_uri

    return ModelRegistry(tracking_uri=mlflow_uri(root), artifact_root=str(root / ".ml_platform"))


def _service(root: Path, notify=None) -> ReleaseService:
    return ReleaseService(_registry(root).client(), root, notify)


def is_analysis(entry: dict) -> bool:
    """An audit record of a canary analysis that moved no alias (or an operator's pause)."""
    evidence = entry.get("evidence") or {}
    if evidence.get("kind") in ("analysis", "ramp"):
        return evidence["kind"] == "analysis"
    return entry.get("alias") == CANARY and entry.get("from_version") == entry.get("to_version")


def history(root: Path, spec: PipelineSpec, analyses: bool = False) -> list[dict]:
    """Alias moves (and ramps), oldest first, from the append-only audit log; every analysis
    too when `analyses`."""
    entries = _service(root).audit(spec.name)
    return entries if analyses else [e for e in entries if not is_analysis(e)]


def outside_moves(root: Path, spec: PipelineSpec) -> list[str]:
    """Aliases the registry holds that the audit trail did not put there (moved in MLflow by
    hand, or by another tool)."""
    service = _service(root)
    recorded: dict[str, str | None] = {}
    for entry in service.audit(spec.name):
        alias, before = entry["alias"], entry.get("from_version")
        to = None if entry.get("to_version") in (None, "none") else str(entry["to_version"])
        recorded[alias] = to
        if alias == CHAMPION:
            if before and before != to:
                recorded[PREVIOUS] = str(before)
            if recorded.get(CANARY) == to:  # a promoted canary is champion now
                recorded[CANARY] = None
    notes = []
    actual = service.aliases(spec.name)
    for alias in (CHAMPION, CANARY, PREVIOUS):
        want, have = recorded.get(alias), actual.get(alias)
        if want != have and not (alias == PREVIOUS and want is None):
            notes.append(
                f"{alias} is {'v' + have if have else 'unset'} in the registry but the audit "
                f"trail says {'v' + want if want else 'unset'}: moved outside the platform"
            )
    return notes


def format_history(entries: list[dict], notes: list[str] = ()) -> str:
    lines = [f"warning: {n}" for n in notes]
    if not entries:
        return "\n".join([*lines, "no alias changes recorded yet"])
    lines.append(f"{'time':<26}{'alias':<11}{'from':>5} → {'to':<5} reason")
    for e in entries:
        lines.append(
            f"{e['time']:<26}{e['alias']:<11}{e['from_version'] or '-':>5} → "
            f"{e['to_version']:<5} {e['reason']}"
        )
    return "\n".join(lines)


def rollback(root: Path, spec: PipelineSpec, to_version: str | None, reason: str) -> str:
    """Move `champion` to `to_version` (default: the `previous` alias); idempotent."""
    return _service(root).rollback_champion(spec.name, to_version, reason)


CANARY_ACTIONS = ("status", "start", "pause", "resume", "abort", "promote")


def canary(
    root: Path, spec: PipelineSpec, action: str, version: str | None, reason: str, notify=None
) -> str | dict:
    """An operator's canary command; every one but `status` is recorded in the audit trail."""
    service = _service(root, notify)
    name = spec.name
    if action == "status":
        return service.status(name)
    current = service.aliases(name).get(CANARY)
    if action == "start":
        target = version or service.aliases(name).get(CHALLENGER)
        if target is None:
            raise ReleaseRefused(f"{name} has no challenger; pass --version N")
        if current is not None and current != str(target):
            service.roll_back(name, current, f"operator replaced canary v{current}: {reason}", {})
        return service.start(spec, str(target), f"operator start: {reason}", operator=True)
    if current is None or (version is not None and str(version) != current):
        raise ReleaseRefused(f"{name} has no canary{'' if version is None else ' v' + version}")
    if action in ("pause", "resume"):
        return service.set_paused(name, action == "pause", reason)
    if action == "abort":
        champion = service.aliases(name).get(CHAMPION)
        why = f"operator aborted canary v{current}: {reason}; champion v{champion} unchanged"
        return service.roll_back(name, current, why, {"operator": True})
    if action == "promote":
        return service.promote(name, current, f"operator promoted canary v{current}: {reason}", {})
    raise ValueError(f"unknown canary action {action!r}; one of {CANARY_ACTIONS}")


def reproduce(root: Path, spec: PipelineSpec, version: str) -> dict:
    """Retrain a version from its recorded training data and params; compare its holdout loss
    (MAE, or log loss for a classifier) with the recorded one."""
    registry = _registry(root)
    model_version = registry.client().get_model_version(spec.name, str(version))
    tags = model_version.tags
    md5 = tags.get("training_set_md5")
    if not md5:
        raise LookupError(f"{spec.name} v{version} has no training_set_md5 tag")
    path = DvcLedger(root).fetch(md5)
    training_set = pd.read_parquet(path)
    run = registry.client().get_run(model_version.run_id)
    recorded = {k: v for k, v in run.data.params.items() if k not in ("estimator", "task")}
    params = {k: _param_value(v, spec.model.params.get(k)) for k, v in recorded.items()}
    replay = spec.model_copy(update={"model": spec.model.model_copy(update={"params": params})})
    model = training.fit(training_set, replay)
    evaluation = training.evaluate(model, training_set, replay)
    loss = spec.loss_name
    recorded_loss = float(tags[f"holdout_{loss}"])
    return {
        "version": str(version),
        "training_set_md5": md5,
        "restored_from": str(path),
        f"holdout_{loss}_recorded": recorded_loss,
        f"holdout_{loss}_reproduced": evaluation.loss,
        "identical": abs(evaluation.loss - recorded_loss) <= 1e-9 * max(1.0, recorded_loss),
    }


def _param_value(text: str, like: object) -> object:
    """MLflow stores params as strings; restore the spec's type for each."""
    if isinstance(like, bool):
        return text.lower() == "true"
    for cast in (int, float):
        if isinstance(like, cast):
            return cast(text)
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


__all__ = [
    "DvcError",
    "ReleaseRefused",
    "canary",
    "format_history",
    "history",
    "outside_moves",
    "reproduce",
    "rollback",
]
