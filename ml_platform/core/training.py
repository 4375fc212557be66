"""Training sets, model fitting and evaluation: plain pandas and sklearn, no orchestration."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import RegressorMixin
from sklearn.pipeline import Pipeline

from ml_platform.specs import PipelineSpec

LABEL = "label"
SPLIT = "split"
PREDICTION = "prediction"  # columns of the predictions asset
MODEL_VERSION = "model_version"


class TrainingDataError(ValueError):
    """Not enough labelled history to train or evaluate honestly."""


def attach_labels(features: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Join each feature row with the target observed `horizon_days` later for the same entity."""
    keys, ts = spec.entity_keys, spec.timestamp
    later = features[[*keys, ts, spec.target]].rename(columns={spec.target: LABEL})
    later[ts] = later[ts] - pd.Timedelta(days=spec.horizon_days)
    return features.merge(later, on=[*keys, ts], how="left")


def realised_errors(
    predictions: pd.DataFrame, features: pd.DataFrame, spec: PipelineSpec, model_version: int
) -> np.ndarray:
    """Label minus stored prediction, for the rows `model_version` predicted whose label arrived.

    Monitoring scores the predictions that were actually made, not a fresh re-prediction: a row
    another version predicted says nothing about this one, so it is left out.
    """
    keys = [*spec.entity_keys, spec.timestamp]
    if predictions.empty or PREDICTION not in predictions.columns:
        return np.array([], dtype="float64")
    made = predictions.loc[predictions[MODEL_VERSION] == int(model_version), [*keys, PREDICTION]]
    labels = attach_labels(features[[*keys, spec.target]], spec).dropna(subset=[LABEL])
    scored = made.merge(labels[[*keys, LABEL]], on=keys, how="inner", validate="one_to_one")
    return scored[LABEL].to_numpy(dtype="float64") - scored[PREDICTION].to_numpy(dtype="float64")


def window_partitions(spec: PipelineSpec) -> int:
    """How many of the newest daily feature partitions `build_training_set` can use."""
    return spec.model.training_window_days + spec.model.holdout_days + spec.horizon_days


def build_training_set(features: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """A time-ordered window of labelled rows, the last `holdout_days` marked as holdout.

    The split is by time, never random, so the holdout imitates the future the model will see.
    """
    labelled = attach_labels(features, spec).dropna(subset=[LABEL])
    if labelled.empty:
        raise TrainingDataError("no feature rows have a label yet: need at least two days of data")
    days = np.sort(labelled[spec.timestamp].unique())
    window = spec.model.training_window_days + spec.model.holdout_days
    days = days[-window:]
    holdout_days = spec.model.holdout_days
    if len(days) <= holdout_days:
        raise TrainingDataError(
            f"only {len(days)} labelled days; need more than holdout_days={holdout_days} "
            "to leave anything to train on"
        )
    frame = labelled[labelled[spec.timestamp].isin(days)].copy()
    frame[SPLIT] = np.where(frame[spec.timestamp].isin(days[-holdout_days:]), "holdout", "train")
    holdout = frame[SPLIT].eq("holdout")
    # Compare like with like: holdout rows need the seasonal-naive forecast too.
    frame = frame[~holdout | frame[spec.baseline_column].notna()]
    order = [spec.timestamp, *spec.entity_keys]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def make_estimator(spec: PipelineSpec) -> Pipeline:
    """Instantiate the spec's sklearn estimator; only `sklearn.*` classes are allowed."""
    module_name, _, class_name = spec.model.estimator.rpartition(".")
    estimator_class = getattr(importlib.import_module(module_name), class_name)
    if not issubclass(estimator_class, RegressorMixin):
        raise TypeError(f"{spec.model.estimator} is not a sklearn regressor")
    return Pipeline([("model", estimator_class(**spec.model.params))])


def fit(training_set: pd.DataFrame, spec: PipelineSpec) -> Pipeline:
    """Fit on the train split only; the holdout stays unseen for promotion."""
    train = training_set[training_set[SPLIT] == "train"]
    model = make_estimator(spec)
    model.fit(train[spec.feature_columns], train[LABEL].to_numpy(dtype="float64"))
    return model


@dataclass(frozen=True)
class Evaluation:
    mae: float
    rmse: float
    wape: float
    mae_baseline: float
    n_rows: int

    def as_metrics(self, prefix: str = "holdout_") -> dict[str, float]:
        return {
            f"{prefix}mae": self.mae,
            f"{prefix}rmse": self.rmse,
            f"{prefix}wape": self.wape,
            f"{prefix}mae_seasonal_naive": self.mae_baseline,
            f"{prefix}rows": float(self.n_rows),
        }


def holdout(training_set: pd.DataFrame) -> pd.DataFrame:
    return training_set[training_set[SPLIT] == "holdout"].reset_index(drop=True)


PREDICT_CHUNK_ROWS = 65_536


def predict(model: Pipeline, frame: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    """Predictions clipped at zero: negative demand is never a useful forecast.

    Rows are predicted in chunks: each row's prediction depends only on that row, and the
    estimator's float copy of 730 days × 1,000 stores of features alone was about 160 MB.
    """
    columns = spec.feature_columns
    if len(frame) <= PREDICT_CHUNK_ROWS:
        return clip_predictions(model.predict(frame[columns]))
    chunks = [
        model.predict(frame.iloc[start : start + PREDICT_CHUNK_ROWS][columns])
        for start in range(0, len(frame), PREDICT_CHUNK_ROWS)
    ]
    return clip_predictions(np.concatenate(chunks))


def prediction_frame(
    model: Pipeline, features: pd.DataFrame, spec: PipelineSpec, model_version: int
) -> pd.DataFrame:
    """The stored predictions: entity, feature day, the day predicted, value and model version."""
    out = features[[*spec.entity_keys, spec.timestamp]].copy()
    out["prediction_for"] = out[spec.timestamp] + pd.Timedelta(days=spec.horizon_days)
    out[PREDICTION] = predict(model, features, spec) if len(features) else []
    out[MODEL_VERSION] = int(model_version)
    return out


def clip_predictions(values: np.ndarray) -> np.ndarray:
    """The one post-processing step, shared by batch and online predictions."""
    return np.clip(values, 0.0, None)


def evaluate(model: Pipeline, rows: pd.DataFrame, spec: PipelineSpec) -> Evaluation:
    """Holdout metrics for the model and the seasonal-naive baseline on the same rows."""
    if rows.empty:
        raise TrainingDataError("holdout is empty: nothing to evaluate on")
    actual = rows[LABEL].to_numpy(dtype="float64")
    errors = actual - predict(model, rows, spec)
    baseline = actual - rows[spec.baseline_column].to_numpy(dtype="float64")
    total = np.abs(actual).sum()
    return Evaluation(
        mae=float(np.mean(np.abs(errors))),
        rmse=float(np.sqrt(np.mean(errors**2))),
        wape=float(np.abs(errors).sum() / total) if total else float("nan"),
        mae_baseline=float(np.mean(np.abs(baseline))),
        n_rows=len(rows),
    )
