"""Training sets, model fitting and evaluation: plain pandas and sklearn, no orchestration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from ml_platform.specs import PipelineSpec

LABEL = "label"
SPLIT = "split"
PREDICTION = "prediction"  # columns of the predictions asset
PREDICTED_CLASS = "predicted_class"
MODEL_VERSION = "model_version"
PROBABILITY_EPS = 1e-15  # log loss of a probability clipped away from 0 and 1


class TrainingDataError(ValueError):
    """Not enough labelled history to train or evaluate honestly."""


def attach_labels(features: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Join each feature row with the target observed `horizon_days` later for the same entity."""
    keys, ts = spec.entity_keys, spec.timestamp
    later = features[[*keys, ts, spec.target]].rename(columns={spec.target: LABEL})
    later[ts] = later[ts] - pd.Timedelta(days=spec.horizon_days)
    return features.merge(later, on=[*keys, ts], how="left")


def realised_losses(
    predictions: pd.DataFrame, features: pd.DataFrame, spec: PipelineSpec, model_version: int
) -> np.ndarray:
    """Per-row loss of the stored predictions `model_version` made whose label has arrived.

    Monitoring scores the predictions that were actually made, not a fresh re-prediction: a row
    another version predicted says nothing about this one, so it is left out.
    """
    keys = [*spec.entity_keys, spec.timestamp]
    if predictions.empty or PREDICTION not in predictions.columns:
        return np.array([], dtype="float64")
    made = predictions.loc[predictions[MODEL_VERSION] == int(model_version), [*keys, PREDICTION]]
    labels = attach_labels(features[[*keys, spec.target]], spec).dropna(subset=[LABEL])
    scored = made.merge(labels[[*keys, LABEL]], on=keys, how="inner", validate="one_to_one")
    return row_losses(scored[LABEL].to_numpy(), scored[PREDICTION].to_numpy(), spec)


def row_losses(labels: np.ndarray, predictions: np.ndarray, spec: PipelineSpec) -> np.ndarray:
    """The per-row loss every comparison pairs: absolute error, or log loss of a probability."""
    actual = np.asarray(labels, dtype="float64")
    predicted = np.asarray(predictions, dtype="float64")
    if not spec.is_classifier:
        return np.abs(actual - predicted)
    p = np.clip(predicted, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return -(actual * np.log(p) + (1 - actual) * np.log1p(-p))


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
    if spec.baseline_column is not None:
        frame = frame[~holdout | frame[spec.baseline_column].notna()]
    order = [spec.timestamp, *spec.entity_keys]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


# Types the platform's own preprocessing steps hold (SimpleImputer keeps a numpy dtype). They are
# trusted for every model so that a spec lists only what its estimator needs.
PREPROCESSING_TRUSTED_TYPES = ("numpy.dtype",)


def trusted_types(spec: PipelineSpec) -> list[str]:
    """What skops may load for this spec's models: its estimator's types plus ours."""
    return list(dict.fromkeys([*spec.model.skops_trusted_types, *PREPROCESSING_TRUSTED_TYPES]))


def untrusted_types(model: Pipeline, spec: PipelineSpec) -> list[str]:
    """Types in the fitted model that skops would refuse to load for this spec."""
    import skops.io

    found = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return sorted(set(found) - set(trusted_types(spec)))


def make_estimator(spec: PipelineSpec) -> Pipeline:
    """The spec's estimator behind the preprocessing its features need, as one saved pipeline.

    Categorical columns are one-hot encoded inside the model, so batch and online predictions
    share the encoding and a category never seen in training scores as all-zero, not an error.
    Numeric gaps are imputed only for estimators that cannot take NaN (HistGradientBoosting can).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    from ml_platform.spec_checks import estimator_class

    estimator = estimator_class(spec.model.estimator)(**spec.model.params)
    categorical = list(spec.features.categorical)
    numeric = [c for c in spec.feature_columns if c not in categorical]
    allow_nan = estimator.__sklearn_tags__().input_tags.allow_nan
    steps = []
    if categorical or not allow_nan:
        encode = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype="float64")
        fill = "passthrough" if allow_nan else SimpleImputer(strategy="median")
        transformers = [("numeric", fill, numeric)]
        if categorical:
            transformers.append(("categorical", encode, categorical))
        steps.append(("features", ColumnTransformer(transformers, verbose_feature_names_out=False)))
    return Pipeline([*steps, ("model", estimator)])


def fit(training_set: pd.DataFrame, spec: PipelineSpec) -> Pipeline:
    """Fit on the train split only; the holdout stays unseen for promotion."""
    train = training_set[training_set[SPLIT] == "train"]
    model = make_estimator(spec)
    labels = train[LABEL].to_numpy(dtype="int64" if spec.is_classifier else "float64")
    if spec.is_classifier and len(np.unique(labels)) < 2:
        raise TrainingDataError(
            f"the training window holds only class {labels[0] if len(labels) else '?'} of "
            f"{spec.target!r}: a classifier needs both classes"
        )
    model.fit(model_input(train, spec), labels)
    return model


def model_input(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The feature columns in fit order; categories as strings (parquet may hold them as
    numbers or None), so training, batch and online inputs are typed alike."""
    columns = frame[spec.feature_columns]
    nullable = [
        c for c, t in columns.dtypes.items() if isinstance(t, pd.api.extensions.ExtensionDtype)
    ]
    nullable = [c for c in nullable if c not in spec.features.categorical]
    if not spec.features.categorical and not nullable:
        return columns
    columns = columns.copy()
    for name in nullable:  # pandas' nullable ints: NaN for sklearn, not pd.NA
        columns[name] = columns[name].astype("float64")
    for name in spec.features.categorical:
        values = columns[name]
        columns[name] = (
            values.astype("object")
            .where(values.notna(), None)
            .map(lambda v: v if v is None else str(v))
        )
    return columns


@dataclass(frozen=True)
class Evaluation:
    """Holdout metrics; `loss` is the per-row loss promotion compares (MAE or log loss)."""

    loss_name: str
    loss: float
    loss_baseline: float
    metrics: dict[str, float]
    n_rows: int

    def as_metrics(self, prefix: str = "holdout_") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in self.metrics.items()} | {
            f"{prefix}rows": float(self.n_rows)
        }


def holdout(training_set: pd.DataFrame) -> pd.DataFrame:
    return training_set[training_set[SPLIT] == "holdout"].reset_index(drop=True)


def baseline_predictions(training_set: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    """The naive forecast every challenger must beat on the holdout rows: the seasonal-naive
    lag for regression, the training base rate for classification."""
    rows = holdout(training_set)
    if not spec.is_classifier:
        return rows[spec.baseline_column].to_numpy(dtype="float64")
    train = training_set.loc[training_set[SPLIT] == "train", LABEL].to_numpy(dtype="float64")
    rate = float(train.mean()) if train.size else 0.5
    return np.full(len(rows), rate)


PREDICT_CHUNK_ROWS = 65_536


def predict(model: Pipeline, frame: pd.DataFrame, spec: PipelineSpec) -> np.ndarray:
    """The value served for each row: the spec-bounded number, or the class-1 probability.

    Rows are predicted in chunks: each row's prediction depends only on that row, and the
    estimator's float copy of 730 days × 1,000 stores of features alone was about 160 MB.
    """
    if len(frame) <= PREDICT_CHUNK_ROWS:
        return raw_predict(model, model_input(frame, spec), spec)
    chunks = [
        raw_predict(model, model_input(frame.iloc[start : start + PREDICT_CHUNK_ROWS], spec), spec)
        for start in range(0, len(frame), PREDICT_CHUNK_ROWS)
    ]
    return np.concatenate(chunks)


def raw_predict(model: Pipeline, inputs: object, spec: PipelineSpec) -> np.ndarray:
    """`predict` on model-ready inputs (a frame, or a matrix in fit order): the one place that
    turns estimator output into served values, shared by batch and online predictions."""
    if spec.is_classifier:
        positive = list(model.classes_).index(1)
        return model.predict_proba(inputs)[:, positive].astype("float64")
    values = np.asarray(model.predict(inputs), dtype="float64")
    if spec.model.prediction_min is not None or spec.model.prediction_max is not None:
        values = np.clip(values, spec.model.prediction_min, spec.model.prediction_max)
    return values


def predicted_class(probabilities: np.ndarray, spec: PipelineSpec) -> np.ndarray:
    """Class 1 where the probability reaches the spec's decision threshold."""
    return (np.asarray(probabilities) >= spec.model.decision_threshold).astype("int64")


def prediction_frame(
    model: Pipeline, features: pd.DataFrame, spec: PipelineSpec, model_version: int
) -> pd.DataFrame:
    """The stored predictions: entity, feature day, the day predicted, value and model version
    (and the class, for a classifier)."""
    out = features[[*spec.entity_keys, spec.timestamp]].copy()
    out["prediction_for"] = out[spec.timestamp] + pd.Timedelta(days=spec.horizon_days)
    values = predict(model, features, spec) if len(features) else np.array([], dtype="float64")
    out[PREDICTION] = values
    if spec.is_classifier:
        out[PREDICTED_CLASS] = predicted_class(values, spec)
    out[MODEL_VERSION] = int(model_version)
    return out


def evaluate(model: Pipeline, training_set: pd.DataFrame, spec: PipelineSpec) -> Evaluation:
    """Holdout metrics for the model and the naive baseline on the same rows."""
    rows = holdout(training_set)
    if rows.empty:
        raise TrainingDataError("holdout is empty: nothing to evaluate on")
    actual = rows[LABEL].to_numpy(dtype="float64")
    predicted = predict(model, rows, spec)
    baseline = baseline_predictions(training_set, spec)
    loss = float(row_losses(actual, predicted, spec).mean())
    loss_baseline = float(row_losses(actual, baseline, spec).mean())
    if spec.is_classifier:
        metrics = _classification_metrics(actual, predicted, spec)
        metrics["log_loss_base_rate"] = loss_baseline
    else:
        errors = actual - predicted
        total = np.abs(actual).sum()
        metrics = {
            "mae": loss,
            "rmse": float(np.sqrt(np.mean(errors**2))),
            "wape": float(np.abs(errors).sum() / total) if total else float("nan"),
            "mae_seasonal_naive": loss_baseline,
        }
    return Evaluation(spec.loss_name, loss, loss_baseline, metrics, len(rows))


def _classification_metrics(
    actual: np.ndarray, probability: np.ndarray, spec: PipelineSpec
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    both = len(np.unique(actual)) == 2
    return {
        "log_loss": float(row_losses(actual, probability, spec).mean()),
        "roc_auc": float(roc_auc_score(actual, probability)) if both else float("nan"),
        "brier": float(np.mean((probability - actual) ** 2)),
        "accuracy": float(np.mean(predicted_class(probability, spec) == actual)),
        "positive_rate": float(actual.mean()),
    }
