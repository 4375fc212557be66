"""One micro-batch: look up online features for every queued request, predict once per variant.

A batch makes one feature-store round trip and one `predict` call per variant, however many
requests it holds; per-request cost is then only parsing and answering. Each request still gets
its own answer or its own error (an unknown entity fails only the request that named it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import orjson
import pandas as pd

from ml_platform.core import training
from ml_platform.core.canary import SHADOW_COLUMN
from ml_platform.core.json_lines import iso_time
from ml_platform.resources.feature_store import FeatureStore, entity_id
from ml_platform.resources.prediction_log import PredictionLog
from ml_platform.serving.deployment import CANARY, CHAMPION, LoadedModel, Snapshot
from ml_platform.serving.metrics import ServingMetrics
from ml_platform.serving.routing import Router
from ml_platform.specs import PipelineSpec

log = logging.getLogger("ml_platform.serving")


class UnknownEntitiesError(LookupError):
    def __init__(self, pipeline: str, entities: list[dict[str, str]]) -> None:
        self.entities = entities
        names = ", ".join(orjson.dumps(e).decode() for e in entities[:5])
        more = f" and {len(entities) - 5} more" if len(entities) > 5 else ""
        super().__init__(f"no online features for {names}{more} in pipeline {pipeline!r}")

    def payload(self) -> dict:
        return {"error": "unknown_entity", "detail": str(self), "entities": self.entities[:100]}


class NotReadyError(RuntimeError):
    """No champion is loaded yet (nothing promoted, or the registry is unreachable)."""


@dataclass
class PredictJob:
    entities: list[dict[str, str]]
    request_id: str
    future: asyncio.Future | None = field(default=None, repr=False)

    def done(self, result: list[dict] | None = None, error: Exception | None = None) -> None:
        if self.future is None or self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


@dataclass(frozen=True)
class FeatureRow:
    values: dict
    features_hash: str
    feature_day: str
    prediction_for: str


class BatchPredictor:
    """Predicts a list of jobs against one model snapshot."""

    def __init__(
        self,
        spec: PipelineSpec,
        store: FeatureStore,
        metrics: ServingMetrics,
        prediction_log: PredictionLog,
    ) -> None:
        self.spec = spec
        self.store = store
        self.metrics = metrics
        self.prediction_log = prediction_log
        self.columns = list(spec.feature_columns)
        self.categorical = bool(spec.features.categorical)
        self.router = Router()

    def run(self, snapshot: Snapshot, jobs: list[PredictJob]) -> None:
        try:
            self._run(snapshot, jobs)
        except Exception as exc:  # a server fault: fail the batch's requests, keep serving
            log.exception("prediction batch failed")
            for job in jobs:
                job.done(error=exc)

    def _run(self, snapshot: Snapshot, jobs: list[PredictJob]) -> None:
        if snapshot.champion is None:
            error = NotReadyError(f"no champion loaded for {self.spec.name!r} yet")
            for job in jobs:
                job.done(error=error)
            return
        job_ids = [[entity_id(self.spec, e) for e in job.entities] for job in jobs]
        rows = self._lookup([i for ids in job_ids for i in ids])
        live: list[PredictJob] = []
        ids: list[str] = []
        for job, entity_ids in zip(jobs, job_ids, strict=True):
            unknown = [e for e, i in zip(job.entities, entity_ids, strict=True) if rows[i] is None]
            if unknown:
                job.done(error=UnknownEntitiesError(self.spec.name, unknown))
            else:
                live.append(job)
                ids.extend(entity_ids)
        if not live:
            return
        matrix = self._inputs([rows[i].values for i in ids])
        use_canary = np.zeros(len(ids), dtype=bool)
        if snapshot.canary is not None:
            self.router.configure(snapshot.affinity, snapshot.min_sticky_entities)
            routed: list[bool] = []
            answered = {id(j) for j in live}
            for job, entity_ids in zip(jobs, job_ids, strict=True):
                if id(job) in answered:  # one routing decision per answered request
                    routed.extend(self.router.route(entity_ids, snapshot.canary_weight))
            use_canary[:] = routed
        predictions, served_by, canary_failed, shadow = self._predict(snapshot, matrix, use_canary)
        routing = (use_canary, canary_failed, shadow)
        self._answer(live, ids, rows, predictions, served_by, routing, snapshot)

    def _inputs(self, values: list[dict]) -> np.ndarray:
        """The model inputs, one row per entity: a float matrix, or (with categorical features)
        an object matrix that `_model_predict` turns into a typed frame."""
        if self.categorical:
            return np.array([[v.get(c) for c in self.columns] for v in values], dtype=object)
        return np.array([[v.get(c) for c in self.columns] for v in values], dtype="float64")

    def _lookup(self, entity_ids: list[str]) -> dict[str, FeatureRow | None]:
        ids = list(dict.fromkeys(entity_ids))
        found = self.store.get(self.spec.name, ids)
        return {
            i: None if raw is None else self._row(raw) for i, raw in zip(ids, found, strict=True)
        }

    def _row(self, raw: str) -> FeatureRow:
        values = orjson.loads(raw)
        feature_day = str(values[self.spec.timestamp])[:10]
        target_day = date.fromisoformat(feature_day) + timedelta(days=self.spec.horizon_days)
        return FeatureRow(
            values=values,
            features_hash=hashlib.blake2b(raw.encode(), digest_size=8).hexdigest(),
            feature_day=feature_day,
            prediction_for=target_day.isoformat(),
        )

    def _predict(
        self, snapshot: Snapshot, matrix: np.ndarray, use_canary: np.ndarray
    ) -> tuple[np.ndarray, list[LoadedModel], bool, np.ndarray]:
        """Predictions, the model that made each, whether the canary failed this batch, and the
        champion's shadow answer for each canary-served row (NaN elsewhere)."""
        predictions = np.empty(len(matrix))
        shadow_values = np.full(len(matrix), np.nan)
        served_by: list[LoadedModel] = [snapshot.champion] * len(matrix)
        canary_failed = False
        if use_canary.any():
            try:
                values = self._model_predict(snapshot.canary, matrix[use_canary])
                if not np.isfinite(values).all():
                    raise ValueError("canary returned non-finite predictions")
                predictions[use_canary] = values
                for index in np.flatnonzero(use_canary):
                    served_by[index] = snapshot.canary
                # The champion's answer for the same entities: canary analysis compares like
                # with like, not the canary's few sticky entities with everyone else's.
                shadow = self._model_predict(snapshot.champion, matrix[use_canary])
                self.metrics.record_shadow(self.spec.name, snapshot.champion.version, shadow)
                shadow_values[use_canary] = shadow
            except Exception:
                log.exception("canary v%s failed; the champion answers", snapshot.canary.version)
                canary_failed = True
                use_canary = np.zeros_like(use_canary)
                shadow_values[:] = np.nan
        champion_rows = ~use_canary
        if champion_rows.any():
            predictions[champion_rows] = self._model_predict(
                snapshot.champion, matrix[champion_rows]
            )
        return predictions, served_by, canary_failed, shadow_values

    def _model_predict(self, loaded: LoadedModel, matrix: np.ndarray) -> np.ndarray:
        """The batch path's numbers without its DataFrame: the matrix columns are in the order the
        model was fitted on (checked when it was loaded), which saves ~40 % of a small batch."""
        if self.categorical or not loaded.columns_checked:
            frame = pd.DataFrame(matrix, columns=self.columns)
            numeric = [c for c in self.columns if c not in self.spec.features.categorical]
            frame[numeric] = frame[numeric].astype("float64")
            return training.predict(loaded.model, frame, self.spec)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return training.raw_predict(loaded.model, matrix, self.spec)

    def _answer(self, jobs, ids, rows, predictions, served_by, canary, snapshot) -> None:
        routed, canary_failed, shadow = canary
        keys = self.spec.entity_keys
        threshold = self.spec.model.decision_threshold if self.spec.is_classifier else None
        records: list[dict] = []
        position = 0
        stamp = iso_time(timespec="milliseconds")  # many predictions share a second
        for job in jobs:
            answer = []
            routed_to_canary = False
            for entity in job.entities:
                row = rows[ids[position]]
                model = served_by[position]
                variant = CANARY if model is snapshot.canary else CHAMPION
                routed_to_canary |= bool(routed[position])
                value = float(predictions[position])
                item = {
                    **{k: entity[k] for k in keys},
                    "prediction": value,
                    **({"class": int(value >= threshold)} if threshold is not None else {}),
                    "variant": variant,
                    "model_version": model.version,
                    "feature_day": row.feature_day,
                    "prediction_for": row.prediction_for,
                }
                answer.append(item)
                record = {
                    **item,
                    "time": stamp,
                    "request_id": job.request_id,
                    "features_hash": row.features_hash,
                }
                if variant == CANARY:  # the pair the canary analysis judges on the same request
                    record[SHADOW_COLUMN] = float(shadow[position])
                records.append(record)
                position += 1
            self._record_metrics(job, answer, routed_to_canary, canary_failed, snapshot)
            job.done(result=answer)
        self.prediction_log.write(self.spec.name, records)

    def _record_metrics(self, job, answer, routed_to_canary, canary_failed, snapshot) -> None:
        name = self.spec.name
        if routed_to_canary and canary_failed:
            self.metrics.record_batch(name, CANARY, snapshot.canary.version, (), failed=True)
        for variant, model in ((CHAMPION, snapshot.champion), (CANARY, snapshot.canary)):
            values = [a["prediction"] for a in answer if a["variant"] == variant]
            if values:
                self.metrics.record_batch(name, variant, model.version, values)
