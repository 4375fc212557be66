"""Daily drift reports for any range of days, sharing the work across days.

A backfill of a year asks the same question 365 times against one reference: the reference's
statistics are computed once (numeric columns sorted, so each window's histogram of them is a
binary search), the features are ordered by day once (each window is then a slice), and the
champion's losses are joined to their labels once. A single day goes through the same code, so
its report is identical to that day's report from a range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from ml_platform.core import training
from ml_platform.core.drift import (
    CATEGORICAL,
    NUMERIC,
    DriftInputError,
    DriftReport,
    DriftThresholds,
    FrameSource,
    NumericReference,
    categorical_stats,
    concept_drift,
    numeric_stats,
    report_from_stats,
)
from ml_platform.specs import PipelineSpec


@dataclass(frozen=True)
class DayDrift:
    """One day's data drift and concept drift; `in_sample` days were in the model's training."""

    day: date
    report: DriftReport
    concept: dict
    in_sample: bool


def drift_columns(spec: PipelineSpec) -> dict[str, str]:
    """Model inputs plus the target; calendar columns drift by construction, so not them."""
    calendar = set(spec.features.calendar)
    categorical = set(spec.features.categorical)
    return {
        c: CATEGORICAL if c in categorical else NUMERIC
        for c in [spec.target, *spec.feature_columns]
        if c not in calendar
    }


def thresholds_for(spec: PipelineSpec) -> DriftThresholds:
    return DriftThresholds(
        psi=spec.drift.psi_threshold,
        wasserstein=spec.drift.wasserstein_threshold,
        js=spec.drift.js_threshold,
        drift_share=spec.drift.drift_share,
    )


class PreparedReference:
    """A reference window's per-column statistics, computed once for many current windows."""

    def __init__(
        self, reference: pd.DataFrame, columns: dict[str, str], thresholds: DriftThresholds
    ) -> None:
        if len(reference) == 0:
            raise DriftInputError("the reference window is empty (0 rows); nothing to compare")
        missing = [c for c in columns if c not in reference.columns]
        if missing:
            raise DriftInputError(f"columns not found in the reference: {', '.join(missing)}")
        self.columns, self.thresholds, self.n_rows = dict(columns), thresholds, len(reference)
        self.numeric = {
            c: NumericReference.of(_floats(reference[c], "reference")).sort()
            for c, kind in columns.items()
            if kind == NUMERIC
        }
        self.counts = {
            c: reference[c].value_counts(dropna=True, sort=True)
            for c, kind in columns.items()
            if kind == CATEGORICAL
        }

    def compare(self, window: pd.DataFrame) -> DriftReport:
        """The report `compute_drift(reference, window)` would give, from the shared statistics."""
        if len(window) == 0:
            raise DriftInputError("the current window is empty (0 rows); nothing to compare")
        partial = []
        for name, kind in self.columns.items():
            if kind == NUMERIC:
                current = _floats(window[name], "current")
                partial.append(numeric_stats(self.numeric[name], current, self.thresholds.bins))
            else:
                counts = window[name].value_counts(dropna=True, sort=True)
                partial.append(
                    categorical_stats(self.counts[name], self.n_rows, counts, len(window))
                )
        return report_from_stats(self.columns, partial, self.n_rows, len(window), self.thresholds)


def daily_drift(
    reference: pd.DataFrame,
    features: pd.DataFrame,
    predictions: pd.DataFrame,
    days: list[date],
    *,
    spec: PipelineSpec,
    model_version: int,
    holdout_loss: float,
) -> list[DayDrift]:
    """Each day's drift over the `spec.drift.window_days` days ending that day.

    `features` must cover every window (the days before the first one too); `predictions` are the
    stored predictions for the same days (possibly none).
    """
    prepared = PreparedReference(reference, drift_columns(spec), thresholds_for(spec))
    reference_end = pd.Timestamp(reference[spec.timestamp].max())
    features = _by_time(features, spec.timestamp)
    stamps = features[spec.timestamp].to_numpy(dtype="datetime64[ns]")
    loss_stamps, losses = _labelled_losses(predictions, features, spec, model_version)
    horizon = np.timedelta64(spec.horizon_days, "D")
    results = []
    for day in days:
        end = np.datetime64(pd.Timestamp(day), "ns")
        start = np.datetime64(pd.Timestamp(day - timedelta(days=spec.drift.window_days - 1)), "ns")
        first = np.searchsorted(stamps, start, side="left")
        stop = np.searchsorted(stamps, end, side="right")
        window = features.iloc[first:stop].reset_index(drop=True)
        report = prepared.compare(window)
        in_sample = pd.Timestamp(day) <= reference_end
        if in_sample:  # the model has seen these days: no verdict
            report = dataclasses.replace(report, dataset_drift=False)
        # A row's label is the target `horizon` days later, so it is known inside the window
        # only when that later day is in the window too.
        lo = np.searchsorted(loss_stamps, start, side="left")
        hi = np.searchsorted(loss_stamps, end - horizon, side="right")
        concept = concept_drift(losses[lo:hi], holdout_loss, spec.drift.concept_drift_tolerance)
        results.append(DayDrift(day, report, concept, bool(in_sample)))
    return results


def window_of(features: pd.DataFrame, spec: PipelineSpec, day: date) -> pd.DataFrame:
    """The rows of the `window_days` days ending on `day` (for plots of one day's window)."""
    ts = features[spec.timestamp]
    start = pd.Timestamp(day - timedelta(days=spec.drift.window_days - 1))
    return features[(ts >= start) & (ts <= pd.Timestamp(day))].reset_index(drop=True)


def _labelled_losses(
    predictions: pd.DataFrame, features: pd.DataFrame, spec: PipelineSpec, model_version: int
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-day timestamps and losses of the version's predictions whose label exists, by time.

    One join for every window: the per-window answer is the slice of rows whose label day is in
    the window, which `training.realised_losses` on that window alone would find.
    """
    keys = [*spec.entity_keys, spec.timestamp]
    if predictions.empty or training.PREDICTION not in predictions.columns:
        return np.array([], dtype="datetime64[ns]"), np.array([], dtype="float64")
    made = predictions.loc[
        predictions[training.MODEL_VERSION] == int(model_version), [*keys, training.PREDICTION]
    ]
    labels = training.attach_labels(features[[*keys, spec.target]], spec)
    labels = labels.dropna(subset=[training.LABEL])
    scored = made.merge(labels[[*keys, training.LABEL]], on=keys, how="inner", validate="1:1")
    scored = _by_time(scored, spec.timestamp)
    losses = training.row_losses(
        scored[training.LABEL].to_numpy(), scored[training.PREDICTION].to_numpy(), spec
    )
    return scored[spec.timestamp].to_numpy(dtype="datetime64[ns]"), losses


def _by_time(frame: pd.DataFrame, timestamp: str) -> pd.DataFrame:
    """Rows in time order, keeping the given order within a timestamp (a stable sort)."""
    stamps = pd.to_datetime(frame[timestamp])
    if stamps.is_monotonic_increasing and frame[timestamp].dtype == stamps.dtype:
        return frame
    frame = frame.assign(**{timestamp: stamps})
    return frame.iloc[np.argsort(stamps.to_numpy(), kind="stable")].reset_index(drop=True)


def _floats(series: pd.Series, window: str) -> np.ndarray:
    return FrameSource(series.to_frame()).numeric(series.name, window)
