"""Modelling assets: training_set → challenger → promotion, and daily predictions."""

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from ml_platform.assets.ingest import backfill_policy
from ml_platform.assets.results import frame_output, partitioned_output
from ml_platform.core import training
from ml_platform.core.canary import ROLLED_BACK_TAG, prediction_shift
from ml_platform.core.features import encode_by_day
from ml_platform.core.promotion import decide
from ml_platform.core.storage import encode_frame
from ml_platform.names import (
    CANARY,
    CHALLENGER,
    CHAMPION,
    FINGERPRINT_TAG,
    HOLDOUT_LOSS_TAG,
    tracking_key,
)
from ml_platform.release import ReleaseRefused, ReleaseService
from ml_platform.release.service import OFFLINE_SHIFT_TAG
from ml_platform.resources.dvc import DvcLedger
from ml_platform.resources.keys import asset_key
from ml_platform.resources.platform import PlatformPaths, git_commit, source_hash
from ml_platform.resources.registry import REFERENCE_ARTIFACT, ModelRegistry
from ml_platform.specs import PipelineSpec

REFERENCE_ROWS = 50_000
LOSS_LABEL = {"mae": "MAE", "log_loss": "log loss"}


def build_modeling_assets(
    spec: PipelineSpec, partitions: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    name = spec.name
    features_key, training_key = asset_key(spec, "features"), asset_key(spec, "training_set")
    challenger_key, promotion_key = asset_key(spec, "challenger"), asset_key(spec, "promotion")
    trusted = training.trusted_types(spec)

    @dg.asset(
        key=training_key,
        ins={
            "features": dg.AssetIn(
                features_key,
                # The training window plus the days its labels come from; older days are unused.
                metadata={"latest_partitions": training.window_partitions(spec)},
            )
        },
        group_name=name,
        io_manager_key="parquet_io",
        kinds={"pandas", "parquet"},
        description="Point-in-time-correct labelled window with a time-based holdout.",
    )
    def training_set(features: pd.DataFrame) -> dg.Output:
        try:
            frame = training.build_training_set(features, spec)
        except training.TrainingDataError as exc:
            raise dg.Failure(str(exc)) from exc
        split = frame[training.SPLIT].value_counts()
        days = frame[spec.timestamp]
        return frame_output(
            encode_frame(frame),
            {
                "train_rows": int(split.get("train", 0)),
                "holdout_rows": int(split.get("holdout", 0)),
                "first_day": str(days.min().date()),
                "last_day": str(days.max().date()),
            },
        )

    @dg.asset(
        key=challenger_key,
        ins={"training_set": dg.AssetIn(training_key)},
        group_name=name,
        required_resource_keys={tracking_key(spec), "registry", "paths"},
        kinds={"mlflow", "scikitlearn"},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=2),
        description="A fitted model, logged to MLflow and registered with alias `challenger`.",
    )
    def challenger(
        context: dg.AssetExecutionContext, training_set: pd.DataFrame
    ) -> dg.MaterializeResult:
        # dagster-mlflow's tracker is a function resource, so resources come from the context.
        tracker = getattr(context.resources, tracking_key(spec))
        registry: ModelRegistry = context.resources.registry
        paths: PlatformPaths = context.resources.paths
        lineage = _lineage(context, spec, training_key, paths)
        existing = registry.find_version(name, lineage[FINGERPRINT_TAG])
        if existing is not None:
            registry.set_alias(name, CHALLENGER, existing.version)
            tracker.set_tag("ml_platform.reused_version", existing.version)
            tracker.end_run()
            context.log.info(
                f"same data, code and spec as v{existing.version}: reused, not retrained"
            )
            return dg.MaterializeResult(
                metadata={"model_version": int(existing.version), "reused": True, **lineage}
            )
        try:
            version, metrics = _train_and_register(spec, training_set, registry, tracker, lineage)
        except (ValueError, TypeError) as exc:  # the data or model, not a transient fault
            tracker.end_run(status="FAILED")
            raise dg.Failure(
                f"training {spec.model.estimator} failed: {type(exc).__name__}: {exc}",
                allow_retries=False,
            ) from exc
        except Exception:
            tracker.end_run(status="FAILED")
            raise
        return dg.MaterializeResult(
            metadata={"model_version": int(version), "reused": False, **metrics, **lineage}
        )

    @dg.asset(
        key=promotion_key,
        ins={"training_set": dg.AssetIn(training_key)},
        deps=[challenger_key],
        group_name=name,
        kinds={"mlflow"},
        description="Significance-gated promotion of the challenger; evidence recorded.",
    )
    def promotion(
        context: dg.AssetExecutionContext,
        training_set: pd.DataFrame,
        registry: ModelRegistry,
        paths: PlatformPaths,
    ) -> dg.MaterializeResult:
        candidate = registry.alias_version(name, CHALLENGER)
        if candidate is None:
            raise dg.Failure(f"no {CHALLENGER!r} alias on model {name!r}: materialise challenger")
        incumbent = registry.alias_version(name, CHAMPION)
        if incumbent is not None and incumbent.version == candidate.version:
            return dg.MaterializeResult(
                metadata={
                    "decision": "unchanged",
                    "reason": "challenger is already champion",
                    "champion_version": int(incumbent.version),
                }
            )
        rolled_back = registry.client().get_model_version(name, candidate.version).tags
        if ROLLED_BACK_TAG in rolled_back:  # memory: the same data, code and spec failed live
            reason = (
                f"v{candidate.version} was rolled back ({rolled_back[ROLLED_BACK_TAG]}); not "
                f"released again until its data, code or spec change, or an operator runs "
                f"`ml-platform canary start {name} --version {candidate.version}`"
            )
            context.log.warning(reason)
            return dg.MaterializeResult(
                metadata={"decision": "rejected", "reason": reason, "rolled_back": True}
            )
        losses, shift = _holdout_losses(training_set, spec, registry, incumbent is not None)
        decision = decide(
            losses["challenger"],
            losses["baseline"],
            losses.get("champion"),
            spec.promotion.alpha,
            spec.promotion.min_relative_improvement,
            spec.promotion.test,
            loss_name=LOSS_LABEL[spec.loss_name],
        )
        tags = decision.as_tags()
        if shift is not None:  # what the canary's shift check is calibrated on
            tags[OFFLINE_SHIFT_TAG] = shift
        registry.tag_version(name, candidate.version, tags)
        registry.client().set_tag(
            candidate.run_id, "promotion.decision", tags["promotion.decision"]
        )
        # A first model has no champion to canary against: it becomes champion directly.
        canary_mode = spec.deployment.mode == "canary" and incumbent is not None
        alias = CANARY if canary_mode else CHAMPION
        if decision.promote:
            release = ReleaseService(registry.client(), paths.root_path)
            evidence = {k: str(v) for k, v in tags.items()}
            try:
                if canary_mode:
                    release.start(
                        spec, candidate.version, decision.reason, evidence, context.run_id
                    )
                else:
                    release.promote_direct(
                        name, candidate.version, decision.reason, evidence, context.run_id
                    )
            except ReleaseRefused as exc:
                raise dg.Failure(str(exc), allow_retries=False) from exc
        context.log.info(f"promotion decision for v{candidate.version}: {decision.reason}")
        return dg.MaterializeResult(
            metadata=_decision_metadata(decision, candidate, incumbent, alias, spec.loss_name)
        )

    @dg.asset(
        key=asset_key(spec, "predictions"),
        ins={"features": dg.AssetIn(features_key)},
        deps=[promotion_key],
        partitions_def=partitions,
        group_name=name,
        backfill_policy=backfill_policy(),
        io_manager_key="parquet_io",
        output_required=False,
        kinds={"pandas", "parquet"},
        description="Champion predictions of the target `horizon_days` after each day.",
    )
    def predictions(
        context: dg.AssetExecutionContext, features: pd.DataFrame, registry: ModelRegistry
    ) -> Iterator[dg.Output]:
        try:
            model, version = registry.load_model(name, CHAMPION, trusted)
        except LookupError as exc:
            context.log.warning(f"{exc}; no predictions until a model is promoted")
            return
        frame = training.prediction_frame(model, features, spec, int(version.version))
        encoded = encode_by_day(frame, spec.timestamp, context.partition_keys)
        extra = {k: {"model_version": int(version.version)} for k in encoded}
        yield partitioned_output(context, encoded, extra)

    return [training_set, challenger, promotion, predictions]


def _lineage(context, spec: PipelineSpec, training_key: dg.AssetKey, paths: PlatformPaths) -> dict:
    """Where the model comes from: data version, code version, spec and run."""
    event = context.instance.get_latest_materialization_event(training_key)
    data_version = event.asset_materialization.tags.get("dagster/data_version", "unknown")
    commit, dirty = git_commit(paths.root_path)
    code = source_hash()
    fingerprint = hashlib.sha256(f"{data_version}|{code}|{spec.fingerprint()}".encode())
    return {
        "training_set_md5": data_version,
        "dvc_lock_md5": DvcLedger(paths.root_path).lock_hash(),
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "source_hash": code,
        "spec_hash": spec.fingerprint(),
        "dagster_run_id": context.run_id,
        FINGERPRINT_TAG: fingerprint.hexdigest()[:24],
    }


def _train_and_register(spec, training_set, registry, tracker, lineage) -> tuple[str, dict]:
    model = training.fit(training_set, spec)
    untrusted = training.untrusted_types(model, spec)
    if untrusted:  # found before MLflow writes anything, and never worth a retry
        raise ValueError(
            f"the fitted model holds types skops does not trust: {untrusted}; add them to "
            "model.skops_trusted_types in the spec (`ml-platform spec validate` finds them)"
        )
    evaluation = training.evaluate(model, training_set, spec)
    metrics = evaluation.as_metrics()
    tracker.log_params({"estimator": spec.model.estimator, "task": spec.task, **spec.model.params})
    tracker.log_metrics(metrics)
    tracker.set_tags(lineage)
    registry.ensure_model(spec.name, spec.description)
    example = training.model_input(training_set.head(5), spec)
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        serialization_format="skops",
        skops_trusted_types=training.trusted_types(spec),
        signature=infer_signature(example, training.raw_predict(model, example, spec)),
        input_example=example,
        registered_model_name=spec.name,
    )
    _log_reference(tracker, training_set, spec)
    version = str(info.registered_model_version)
    params = {f"param.{k}": v for k, v in spec.model.params.items()}
    tags = {**lineage, **metrics, **params, "estimator": spec.model.estimator, "task": spec.task}
    tags[HOLDOUT_LOSS_TAG] = evaluation.loss
    registry.tag_version(spec.name, version, tags)
    registry.set_alias(spec.name, CHALLENGER, version)
    tracker.end_run()
    return version, metrics


def _log_reference(tracker, training_set: pd.DataFrame, spec: PipelineSpec) -> None:
    """Keep the holdout rows as the drift reference: the most recent data the model was judged on.

    A whole year of training rows would make every 7-day window look drifted through seasonality
    alone; the holdout is the same season and the same entities as the days that follow it.
    """
    recent = training.holdout(training_set)
    sample = recent[[spec.timestamp, spec.target, *spec.feature_columns]]
    sample = sample.sample(n=min(len(sample), REFERENCE_ROWS), random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        sample.reset_index(drop=True).to_parquet(path, index=False)
        tracker.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))


def _holdout_losses(training_set, spec, registry, has_champion: bool):
    """Per-row holdout losses of the challenger, the naive baseline and the champion, and the
    challenger's prediction shift from the champion (None without a champion)."""
    rows = training.holdout(training_set)
    actual = rows[training.LABEL].to_numpy(dtype="float64")
    trusted = training.trusted_types(spec)

    def losses(predicted: np.ndarray) -> np.ndarray:
        return training.row_losses(actual, predicted, spec)

    challenger_model, _ = registry.load_model(spec.name, CHALLENGER, trusted)
    challenger = training.predict(challenger_model, rows, spec)
    result = {
        "challenger": losses(challenger),
        "baseline": losses(training.baseline_predictions(training_set, spec)),
    }
    shift = None
    if has_champion:
        champion_model, _ = registry.load_model(spec.name, CHAMPION, trusted)
        champion = training.predict(champion_model, rows, spec)
        result["champion"] = losses(champion)
        shift = prediction_shift(challenger, champion)
    return result, shift


def _decision_metadata(decision, candidate, incumbent, alias: str, loss: str) -> dict:
    base = decision.against_baseline
    meta = {
        "decision": "promoted" if decision.promote else "rejected",
        "reason": decision.reason,
        "challenger_version": int(candidate.version),
        "target_alias": alias,
        "loss": loss,
        f"{loss}_challenger": base.loss_challenger,
        f"{loss}_baseline": base.loss_reference,
        "p_value_vs_baseline": base.p_value,
        "effect_size_vs_baseline": base.effect_size,
        "improvement_vs_baseline": base.relative_improvement,
    }
    champ = decision.against_champion
    if champ is not None and incumbent is not None:
        meta.update(
            {
                "champion_version": int(incumbent.version),
                f"{loss}_champion": champ.loss_reference,
                "p_value_vs_champion": champ.p_value,
                "effect_size_vs_champion": champ.effect_size,
                "improvement_vs_champion": champ.relative_improvement,
            }
        )
    return meta
