"""The feature recipe: correct lags, point-in-time correctness, and range == day-by-day."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pandas.testing as pdt

from ml_platform.core.features import (
    build_features,
    encode_by_day,
    iter_by_day,
    required_history,
)
from ml_platform.core.storage import encode_frame


def history(days: int = 60, stores: int = 3, start: date = date(2024, 1, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.date_range(start, periods=days, freq="D")
    frame = pd.DataFrame(
        [(d, f"S{s:04d}", "P01") for d in dates for s in range(1, stores + 1)],
        columns=["date", "store_id", "product_id"],
    )
    frame["units_sold"] = rng.integers(0, 100, len(frame))
    frame["price"] = 2.5
    frame["promo"] = rng.integers(0, 2, len(frame))
    return frame


def test_lags_and_rolling_means_are_exact(spec):
    hist = history()
    day = date(2024, 2, 20)
    out = build_features(hist, spec, [day]).set_index("store_id")
    store = hist[hist.store_id == "S0002"].set_index("date")["units_sold"]
    row = out.loc["S0002"]
    assert row["units_sold_lag_1"] == store[pd.Timestamp(day)]
    assert row["units_sold_lag_7"] == store[pd.Timestamp(day - timedelta(days=6))]
    assert row["units_sold_lag_14"] == store[pd.Timestamp(day - timedelta(days=13))]
    window = store[pd.Timestamp(day - timedelta(days=6)) : pd.Timestamp(day)]
    assert np.isclose(row["units_sold_rolling_mean_7"], window.mean())


def test_every_entity_gets_its_own_lags_with_several_products_and_gaps(spec):
    """Rows are flattened from a day × entity matrix; each must land on its own entity."""
    hist = pd.concat(
        [history(stores=4).assign(product_id=p) for p in ("P01", "P02", "P03")], ignore_index=True
    )
    hist["units_sold"] = np.arange(len(hist))  # every value unique: a misplaced lag shows
    hist = hist.sample(frac=0.9, random_state=3).reset_index(drop=True)  # gaps
    days = [date(2024, 2, 20), date(2024, 2, 21)]
    out = build_features(hist, spec, days)
    assert len(out) == len(hist[hist.date.isin(pd.to_datetime(days))])
    value = hist.set_index(["store_id", "product_id", "date"])["units_sold"]
    for row in out.itertuples():
        week_ago = (row.store_id, row.product_id, row.date - pd.Timedelta(days=6))
        assert row.units_sold_lag_1 == value[(row.store_id, row.product_id, row.date)]
        if week_ago in value.index:
            assert row.units_sold_lag_7 == value[week_ago]
        else:
            assert np.isnan(row.units_sold_lag_7)


def test_calendar_features_describe_the_predicted_day(spec):
    out = build_features(history(), spec, [date(2024, 2, 23)])  # a Friday → predicts Saturday
    assert set(out["day_of_week"]) == {5}
    assert set(out["is_weekend"]) == {1}
    holiday_eve = history(days=366)
    out = build_features(holiday_eve, spec, [date(2024, 12, 24)])
    assert set(out["is_holiday"]) == {1}  # predicts 12-25


def test_point_in_time_correct_future_rows_do_not_leak(spec):
    hist = history()
    day = date(2024, 2, 10)
    before = build_features(hist, spec, [day])
    changed = hist.copy()
    future = changed["date"] > pd.Timestamp(day)
    changed.loc[future, "units_sold"] = 10_000
    after = build_features(changed, spec, [day])
    pdt.assert_frame_equal(before, after)


def test_range_run_equals_day_by_day_runs(spec):
    """A backfill and daily runs must write identical partitions (same content hash)."""
    hist = history(days=90)
    days = [date(2024, 2, 1) + timedelta(days=i) for i in range(20)]
    together = dict(iter_by_day(build_features(hist, spec, days), "date"))
    for day in days:
        window = hist[hist["date"] >= pd.Timestamp(required_history(spec, day))]
        alone = build_features(window[window["date"] <= pd.Timestamp(day)], spec, [day])
        pdt.assert_frame_equal(together[day.isoformat()], alone)


def test_encoded_partitions_are_the_bytes_of_each_day_alone(spec):
    """A backfill's partitions hash the same as single-day runs, and a day without rows gets an
    empty frame with the same columns."""
    hist = history(days=60)
    days = [date(2024, 2, 1) + timedelta(days=i) for i in range(5)]
    frame = build_features(hist, spec, days)
    keys = [d.isoformat() for d in days] + ["2024-02-20"]  # the last day has no rows
    encoded = encode_by_day(frame, "date", keys)
    assert list(encoded) == keys
    for day in days:
        alone = encode_frame(frame[frame["date"] == pd.Timestamp(day)].reset_index(drop=True))
        assert encoded[day.isoformat()].md5 == alone.md5
    assert encoded["2024-02-20"].rows == 0
    assert encoded["2024-02-20"].dtypes == encode_frame(frame).dtypes


def test_missing_history_gives_nan_lags_not_errors(spec):
    hist = history(days=3)
    out = build_features(hist, spec, [date(2024, 1, 3)])
    assert len(out) == 3
    assert out["units_sold_lag_14"].isna().all()
    assert out["units_sold_lag_1"].notna().all()


def test_day_without_rows_gives_empty_frame_with_columns(spec):
    out = build_features(history(days=10), spec, [date(2024, 3, 1)])
    assert out.empty
    assert set(spec.feature_columns) <= set(out.columns)


def test_rolling_mean_matches_pandas_over_every_column_with_gaps():
    from ml_platform.core.features import rolling_mean

    rng = np.random.default_rng(11)
    values = rng.gamma(2.0, 50.0, size=(120, 9))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[:20, 4] = np.nan  # a series that starts late
    wide = pd.DataFrame(values, index=pd.date_range("2025-01-01", periods=120, name="date"))
    for window, min_periods in ((7, 3), (28, 14), (200, 1)):
        expected = wide.rolling(window, min_periods=min_periods).mean()
        got = rolling_mean(wide, window, min_periods)
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, atol=1e-9)
