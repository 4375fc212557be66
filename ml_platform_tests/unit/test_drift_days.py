"""Shared work across days and columns: the same answers as one comparison at a time.

A backfill prepares the reference once and slices one pass over the features; a parquet window is
read a column at a time. Each must give what the plain path gives, or the speed is a lie.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.core import training
from ml_platform.core.datagen import GeneratorConfig, generate_day
from ml_platform.core.drift import compute_drift
from ml_platform.core.drift_days import (
    PreparedReference,
    daily_drift,
    drift_columns,
    thresholds_for,
    window_of,
)
from ml_platform.core.drift_numeric import (
    _GRID_CELLS,
    NumericReference,
    _cell_histogram,
    _sorted_cell_histogram,
)
from ml_platform.core.drift_source import ParquetSource
from ml_platform.core.features import build_features


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).normal(0, 1, 5_000),
        np.random.default_rng(2).poisson(3, 5_000).astype(float),  # heavy ties
        np.concatenate([np.zeros(3_000), np.linspace(-1e6, 1e6, 11)]),  # outliers in both tails
        np.random.default_rng(3).lognormal(0, 2, 5_000),
    ],
)
def test_sorted_histogram_equals_the_pass_over_the_rows(values):
    rng = np.random.default_rng(0)
    grids = [(-1.0, 1.0), (0.0, 1e-9), (2.0, 7.5), tuple(np.quantile(values, [0.2, 0.9]))]
    for lo, hi in grids:
        lo = float(lo) + float(rng.normal(0, 1e-3))
        hi = max(float(hi), lo + 1e-9)  # the grid always has hi > lo
        scale = _GRID_CELLS / (hi - lo)
        counts, below, above = _cell_histogram(values, lo, scale)
        fast_counts, fast_below, fast_above = _sorted_cell_histogram(np.sort(values), lo, scale)
        np.testing.assert_array_equal(fast_counts, counts)
        assert fast_below == pytest.approx(below, rel=1e-12, abs=1e-9)
        assert fast_above == pytest.approx(above, rel=1e-12, abs=1e-9)


def test_prepared_reference_agrees_with_compute_drift():
    rng = np.random.default_rng(5)
    n = 20_000
    reference = pd.DataFrame(
        {"x": rng.normal(0, 1, n), "k": rng.poisson(4, n), "c": rng.choice(list("abcd"), n)}
    )
    current = pd.DataFrame(
        {
            "x": rng.normal(0.3, 1, 3_000),
            "k": rng.poisson(4, 3_000),
            "c": rng.choice(list("abce"), 3_000),
        }
    )
    columns = {"x": "numeric", "k": "numeric", "c": "categorical"}
    plain = compute_drift(reference, current, columns=columns)
    shared = PreparedReference(reference, columns, plain.thresholds).compare(current)
    assert [c.drifted for c in shared.columns] == [c.drifted for c in plain.columns]
    for a, b in zip(shared.columns, plain.columns, strict=True):
        assert a.psi == pytest.approx(b.psi, rel=1e-9)
        assert a.distance == pytest.approx(b.distance, rel=1e-9)
        assert a.p_value == pytest.approx(b.p_value, rel=1e-9)
    big = NumericReference.of(np.tile(reference["x"].to_numpy(), 12)).sort()
    assert big.ordered is not None and big.ordered.size == 12 * n


def test_parquet_columns_give_the_frame_report(tmp_path):
    rng = np.random.default_rng(9)
    n = 5_000
    frames = []
    for shift in (0.0, 0.5):
        frame = pd.DataFrame(
            {
                "num": rng.normal(shift, 1, n),
                "count": rng.poisson(3 + shift, n),
                "with_gaps": np.where(rng.random(n) < 0.1 + shift / 2, np.nan, rng.random(n)),
                "cat": rng.choice(["a", "b", "c", None], n),
                "flag": rng.random(n) < 0.3,
                "day": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 9, n), "D"),
            }
        )
        frame["cat"] = frame["cat"].astype("category") if shift else frame["cat"]
        frames.append(frame)
    paths = [tmp_path / "ref.parquet", tmp_path / "cur.parquet"]
    for frame, path in zip(frames, paths, strict=True):
        frame.to_parquet(path, row_group_size=1_000)
    from_frames = compute_drift(*frames)
    from_files = compute_drift(*(ParquetSource(p) for p in paths))
    assert [c.column for c in from_files.columns] == ["num", "count", "with_gaps", "cat", "flag"]
    assert from_files.to_dict()["n_drifted"] == from_frames.to_dict()["n_drifted"]
    for a, b in zip(from_files.columns, from_frames.columns, strict=True):
        assert (a.column, a.kind, a.drifted, a.reason) == (b.column, b.kind, b.drifted, b.reason)
        assert a.psi == pytest.approx(b.psi, rel=1e-9)
        assert a.missing_share_current == pytest.approx(b.missing_share_current)


@pytest.fixture(scope="module")
def sales(spec):
    config = GeneratorConfig(stores=6, days=200, seed=3, holidays=tuple(spec.features.holidays))
    days = [config.start + timedelta(days=i) for i in range(config.days)]
    validated = pd.concat([generate_day(config, d) for d in days], ignore_index=True)
    validated["date"] = pd.to_datetime(validated["date"])
    features = build_features(validated, spec, days)
    reference = training.holdout(
        training.build_training_set(features[features.date <= pd.Timestamp(days[150])], spec)
    )
    predictions = features[[*spec.entity_keys, spec.timestamp]].copy()
    noise = np.random.default_rng(4).normal(0, 2, len(features))
    predictions[training.PREDICTION] = features[spec.target].to_numpy() + noise
    predictions[training.MODEL_VERSION] = np.where(features.date.dt.day % 5 == 0, 2, 3)
    return features, predictions, reference, days


def test_a_range_gives_each_day_the_single_day_report(spec, sales):
    features, predictions, reference, days = sales
    wanted = [d.date() for d in pd.date_range(days[140], days[-1], freq="D")]
    common = {"spec": spec, "model_version": 3, "holdout_loss": 1.5}
    ranged = daily_drift(reference, features, predictions, wanted, **common)
    assert [d.day for d in ranged] == wanted
    assert {d.in_sample for d in ranged} == {True, False}
    window = spec.drift.window_days
    for result in [*ranged[:: max(1, len(ranged) // 7)], ranged[-1]]:
        day = result.day
        first = pd.Timestamp(day - timedelta(days=window - 1))
        upstream = features[(features.date >= first) & (features.date <= pd.Timestamp(day))]
        made = predictions[(predictions.date >= first) & (predictions.date <= pd.Timestamp(day))]
        (single,) = daily_drift(reference, upstream, made, [day], **common)
        assert single.report.to_dict() == result.report.to_dict()
        assert single.concept == result.concept
        assert single.in_sample == result.in_sample
        # The concept rows are those `realised_losses` finds on the window alone.
        losses = training.realised_losses(made, window_of(features, spec, day), spec, 3)
        assert result.concept["n"] == losses.size > 0
        assert result.concept["mae_current"] == pytest.approx(float(np.mean(losses)))
        # And the data drift is the plain comparison's, decision for decision.
        plain = compute_drift(
            reference, upstream, columns=drift_columns(spec), thresholds=thresholds_for(spec)
        )
        assert result.report.drifted_columns == plain.drifted_columns
