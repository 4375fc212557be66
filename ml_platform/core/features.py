"""The feature recipe: one function shared by batch (offline) and online features.

A feature row for (entity, day D) describes the prediction of the target on D + horizon using only
data up to and including D, so every row is point-in-time correct by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, timedelta

import numpy as np
import pandas as pd

from ml_platform.core.storage import EncodedFrame, encode_frame
from ml_platform.specs import PipelineSpec


def build_features(
    history: pd.DataFrame, spec: PipelineSpec, feature_days: Iterable[date]
) -> pd.DataFrame:
    """Feature rows for every entity observed on each of `feature_days`.

    `history` holds validated rows for the feature days and at least `spec.lookback_days` before
    the first of them; missing history yields NaN lags rather than an error, because new
    entities and gaps are normal and the estimator handles NaN.
    """
    days = pd.DatetimeIndex(sorted({pd.Timestamp(d) for d in feature_days}))
    keys, ts, target = spec.entity_keys, spec.timestamp, spec.target
    history = encode_target(history, spec)
    as_is = [*spec.features.passthrough, *spec.features.categorical]
    if days.empty:
        return pd.DataFrame(columns=list(dict.fromkeys([*keys, ts, target, *spec.feature_columns])))
    # An entity key may be a feature too (the hour of an hourly series): one column, not two.
    today = history[history[ts].isin(days)][list(dict.fromkeys([*keys, ts, *as_is, target]))]
    if today.empty:
        return _empty_features(spec)

    wide = _daily_wide(history, spec, start=days[0] - pd.Timedelta(days=spec.lookback_days))
    derived = {}
    for lag in spec.features.lags:
        derived[f"{target}_lag_{lag}"] = wide.shift(lag - spec.horizon_days)
    for window in spec.features.rolling_means:
        rolled = rolling_mean(wide, window, min_periods=max(1, window // 2))
        derived[f"{target}_rolling_mean_{window}"] = rolled
    out = today.merge(_long_rows(wide, derived, days, spec), on=[*keys, ts], how="left")
    out = out.join(calendar_features(out[ts], spec))
    out = out[list(dict.fromkeys([*keys, ts, target, *spec.feature_columns]))]
    return out.sort_values([ts, *keys], kind="stable").reset_index(drop=True)


def encode_target(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """A classifier's target as 0/1 (`model.positive_class` is 1), the one encoding that
    features, labels, drift and online accuracy share; other targets pass through untouched."""
    positive = spec.model.positive_class
    if not spec.is_classifier or positive in (None, 1) or spec.target not in frame.columns:
        return frame
    values = frame[spec.target]
    encoded = (values.astype("object") == positive).astype("int64").where(values.notna())
    return frame.assign(**{spec.target: encoded})


def rolling_mean(wide: pd.DataFrame, window: int, min_periods: int) -> pd.DataFrame:
    """`wide.rolling(window, min_periods).mean()` for every column at once.

    pandas rolls a frame column by column, about 1.5 ms a column: with 10,000 series that was
    tens of seconds per window in every backfill. Here the window is `window` shifted adds over
    the whole day × entity matrix (NaN skipped, counted as pandas counts them); values agree with
    pandas to floating-point rounding (`bench/scale_hotspots.py` checks it).
    """
    values = wide.to_numpy(dtype="float64")
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    sums, counts = np.zeros_like(filled), np.zeros(values.shape, dtype=np.int64)
    rows = len(values)
    for shift in range(min(window, rows)):
        sums[shift:] += filled[: rows - shift]
        counts[shift:] += present[: rows - shift]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts >= min_periods, sums / counts, np.nan)
    return pd.DataFrame(mean, index=wide.index, columns=wide.columns)


def _daily_wide(history: pd.DataFrame, spec: PipelineSpec, start: pd.Timestamp) -> pd.DataFrame:
    """Target as a day × entity matrix with a row for every calendar day (gaps are NaN)."""
    ts = spec.timestamp
    window = history[history[ts] >= start]
    wide = window.pivot_table(
        index=ts, columns=spec.entity_keys, values=spec.target, aggfunc="mean"
    ).astype("float64")
    full = pd.date_range(min(start, wide.index.min()), wide.index.max(), freq="D", name=ts)
    return wide.reindex(full)


def _long_rows(
    wide: pd.DataFrame, derived: dict[str, pd.DataFrame], days: pd.DatetimeIndex, spec: PipelineSpec
) -> pd.DataFrame:
    """One row per (feature day, entity) with every derived column: the day × entity matrices
    flattened day-major. Plain numpy: `DataFrame.stack` over thousands of entity columns cost
    seconds per call."""
    selected = wide.index.isin(days)
    day_index, entities = wide.index[selected], wide.columns
    long = pd.DataFrame({spec.timestamp: np.repeat(day_index.to_numpy(), len(entities))})
    for level, key in enumerate(spec.entity_keys):
        long[key] = np.tile(entities.get_level_values(level).to_numpy(), len(day_index))
    for name, frame in derived.items():
        long[name] = frame.to_numpy()[selected].ravel()  # row-major: day-major, entity-minor
    return long


def calendar_features(feature_day: pd.Series, spec: PipelineSpec) -> pd.DataFrame:
    """Calendar facts about the predicted day, which are known in advance.

    Computed once per distinct day and spread to the rows: a 730-day range has 730 days but
    7.3M rows at 10,000 series, where formatting every row's date (`strftime`) took tens of
    seconds.
    """
    days = pd.to_datetime(feature_day)
    codes, distinct = pd.factorize(days)
    if (codes < 0).any():  # a missing day: row by row, so it fails as it always has
        return _calendar_of(days, spec).set_axis(feature_day.index)
    per_day = _calendar_of(pd.Series(distinct), spec)
    return pd.DataFrame(
        {name: per_day[name].to_numpy()[codes] for name in per_day.columns},
        index=feature_day.index,
    )


def _calendar_of(days: pd.Series, spec: PipelineSpec) -> pd.DataFrame:
    target_day = days + pd.Timedelta(days=spec.horizon_days)
    every_year = {h for h in spec.features.holidays if len(h) == 5}  # MM-DD
    one_day = {h for h in spec.features.holidays if len(h) == 10}  # YYYY-MM-DD
    available = {
        "day_of_week": lambda d: d.dt.dayofweek,
        "day_of_month": lambda d: d.dt.day,
        "month": lambda d: d.dt.month,
        "day_of_year": lambda d: d.dt.dayofyear,
        "is_weekend": lambda d: (d.dt.dayofweek >= 5).astype("int64"),
        "is_holiday": lambda d: (
            d.dt.strftime("%m-%d").isin(every_year) | d.dt.strftime("%Y-%m-%d").isin(one_day)
        ).astype("int64"),
    }
    return pd.DataFrame(
        {name: available[name](target_day).astype("int64") for name in spec.features.calendar},
        index=days.index,
    )


def _empty_features(spec: PipelineSpec) -> pd.DataFrame:
    cols = dict.fromkeys([*spec.entity_keys, spec.timestamp, spec.target, *spec.feature_columns])
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})


def required_history(spec: PipelineSpec, first_day: date) -> date:
    """The earliest day whose validated rows the features of `first_day` depend on."""
    return first_day - timedelta(days=spec.lookback_days)


def iter_by_day(frame: pd.DataFrame, column: str) -> Iterator[tuple[str, pd.DataFrame]]:
    """(YYYY-MM-DD, rows) for each day in `frame`, one day at a time, in date order."""
    if frame.empty:
        return
    # Whole days as integers; only one date per day is formatted (strftime on every row of a
    # 730-day backfill took seconds).
    days = pd.to_datetime(frame[column]).to_numpy().astype("datetime64[D]")
    order = np.argsort(days, kind="stable")
    sorted_days = days[order]
    bounds = np.flatnonzero(sorted_days[1:] != sorted_days[:-1]) + 1
    for idx in np.split(order, bounds):
        if len(idx):
            key = str(np.datetime_as_string(days[idx[0]], unit="D"))
            yield key, frame.iloc[idx].reset_index(drop=True)


def encode_by_day(frame: pd.DataFrame, column: str, days: Iterable[str]) -> dict[str, EncodedFrame]:
    """Each of `days` as a parquet partition of its rows (no rows: an empty frame, same columns).

    Each day is encoded as soon as it is split, so only one day's copy exists at a time: splitting
    730 days first held a second copy of the whole frame (about 100 MB at 1,000 stores).
    """
    encoded = {key: encode_frame(rows) for key, rows in iter_by_day(frame, column)}
    empty = encode_frame(frame.iloc[0:0])
    return {day: encoded.get(day, empty) for day in days}
