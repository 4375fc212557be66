"""Audit-trail commands: `history`, `rollback` and `reproduce` of a pipeline's champion.

They answer "which data, code and parameters made the model serving now?", put the previous
champion back in one command, and retrain any version from its recorded training data.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ml_platform.core import training
from ml_platform.core.json_lines import read_json_lines
from ml_platform.resources.audit import record_alias_change
from ml_platform.resources.dvc import DvcError, DvcLedger
from ml_platform.resources.registry import CHAMPION, PREVIOUS, ModelRegistry
from ml_platform.specs import PipelineSpec


def _registry(root: Path) -> ModelRegistry:
    from ml_platform.settings import mlflow_uri

    return ModelRegistry(tracking_uri=mlflow_uri(root), artifact_root=str(root / ".ml_platform"))


def _audit_path(root: Path, spec: PipelineSpec) -> Path:
    return root / ".ml_platform" / "audit" / f"{spec.name}.jsonl"


def history(root: Path, spec: PipelineSpec) -> list[dict]:
    """Every alias change, oldest first, as recorded in the append-only audit log."""
    return read_json_lines(_audit_path(root, spec))


def format_history(entries: list[dict]) -> str:
    if not entries:
        return "no alias changes recorded yet"
    lines = [f"{'time':<26}{'alias':<11}{'from':>5} → {'to':<5} reason"]
    for e in entries:
        lines.append(
            f"{e['time']:<26}{e['alias']:<11}{e['from_version'] or '-':>5} → "
            f"{e['to_version']:<5} {e['reason']}"
        )
    return "\n".join(lines)


def rollback(root: Path, spec: PipelineSpec, to_version: str | None, reason: str) -> str:
    """Move `champion` to `to_version` (default: the `previous` alias); idempotent."""
    registry = _registry(root)
    current = registry.alias_version(spec.name, CHAMPION)
    if current is None:
        raise LookupError(f"{spec.name} has no champion to roll back")
    if to_version is None:
        previous = registry.alias_version(spec.name, PREVIOUS)
        if previous is None:
            raise LookupError(f"{spec.name} has no previous champion; pass --to VERSION")
        to_version = previous.version
    target = registry.client().get_model_version(spec.name, str(to_version))
    if str(current.version) == str(target.version):
        return f"champion of {spec.name} is already v{target.version}; nothing to do"
    registry.set_alias(spec.name, CHAMPION, target.version)
    registry.set_alias(spec.name, PREVIOUS, current.version)
    evidence = {"rolled_back_from": str(current.version)}
    registry.tag_version(spec.name, target.version, {"rollback.reason": reason})
    record_alias_change(
        _audit_path(root, spec),
        spec.name,
        CHAMPION,
        current,
        target.version,
        f"rollback: {reason}",
        evidence,
        None,
    )
    return f"champion of {spec.name}: v{current.version} → v{target.version} ({reason})"


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


__all__ = ["DvcError", "format_history", "history", "reproduce", "rollback"]
