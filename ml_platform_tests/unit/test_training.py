"""Training set construction and behavioural model tests on generated data."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ml_platform.core import training
from ml_platform.core.datagen import GeneratorConfig, generate_day
from ml_platform.core.features import build_features


@pytest.fixture(scope="module")
def features(spec) -> pd.DataFrame:
    config = GeneratorConfig(stores=8, days=220, seed=11, holidays=tuple(spec.features.holidays))
    days = [config.start + timedelta(days=i) for i in range(config.days)]
    validated = pd.concat([generate_day(config, d) for d in days], ignore_index=True)
    validated["date"] = pd.to_datetime(validated["date"])
    return build_features(validated, spec, days)


def test_labels_are_the_next_day_target(features, spec):
    labelled = training.attach_labels(features, spec)
    row = labelled[(labelled.store_id == "S0003") & (labelled.date == "2024-03-01")].iloc[0]
    nxt = features[(features.store_id == "S0003") & (features.date == "2024-03-02")].iloc[0]
    assert row[training.LABEL] == nxt["units_sold"]


def test_split_is_by_time_and_holdout_is_last(features, spec):
    ts = training.build_training_set(features, spec)
    train, hold = ts[ts.split == "train"], ts[ts.split == "holdout"]
    assert train["date"].max() < hold["date"].min()
    assert hold["date"].nunique() == spec.model.holdout_days
    assert hold[spec.baseline_column].notna().all()
    assert ts[training.LABEL].notna().all()


def test_the_newest_window_partitions_give_the_same_training_set(features, spec):
    """What lets `training_set` read only its window instead of every feature partition."""
    model = spec.model.model_copy(update={"training_window_days": 120})
    spec = spec.model_copy(update={"model": model})
    days = sorted(features[spec.timestamp].unique())
    needed = training.window_partitions(spec)
    assert len(days) > needed, "the fixture must have more history than the window"
    recent = features[features[spec.timestamp].isin(days[-needed:])]
    full = training.build_training_set(features, spec)
    pd.testing.assert_frame_equal(training.build_training_set(recent, spec), full)
    shorter = features[features[spec.timestamp].isin(days[-(needed - 1) :])]
    assert len(training.build_training_set(shorter, spec)) < len(full)


def test_too_little_history_is_a_clear_error(features, spec):
    first_days = features[features["date"] < "2024-01-10"]
    with pytest.raises(training.TrainingDataError, match="holdout_days"):
        training.build_training_set(first_days, spec)


@pytest.fixture(scope="module")
def model(features, spec):
    return training.fit(training.build_training_set(features, spec), spec)


def test_model_beats_seasonal_naive_on_holdout(features, spec, model):
    ts = training.build_training_set(features, spec)
    evaluation = training.evaluate(model, ts, spec)
    assert evaluation.loss_name == "mae"
    assert evaluation.loss == evaluation.metrics["mae"]
    assert evaluation.loss < 0.9 * evaluation.loss_baseline


def test_behaviour_promotion_raises_the_forecast(features, spec, model):
    rows = features.tail(200).copy()
    regular_price = rows["price"].where(rows["promo"] == 0, rows["price"] / 0.8)
    rows["promo"], rows["price"] = 0, regular_price
    without = training.predict(model, rows, spec)
    rows["promo"], rows["price"] = 1, regular_price * 0.8  # a promotion cuts the price ~20 %
    with_promo = training.predict(model, rows, spec)
    assert np.mean(with_promo) > np.mean(without)


def test_behaviour_higher_recent_sales_raise_the_forecast(features, spec, model):
    rows = features.tail(200).copy()
    base = training.predict(model, rows, spec)
    for column in spec.feature_columns:
        if column.startswith("units_sold_"):
            rows[column] = rows[column] * 1.5
    assert np.mean(training.predict(model, rows, spec)) > np.mean(base) * 1.2


def test_behaviour_predictions_respect_the_specs_floor(features, spec, model):
    rows = features.tail(50).copy()
    for column in spec.feature_columns:
        if column.startswith("units_sold_"):
            rows[column] = 0.0
    assert spec.model.prediction_min == 0
    assert (training.predict(model, rows, spec) >= 0).all()


def test_output_bounds_come_from_the_spec_not_the_code(features, spec, model):
    rows = features.tail(200)
    unbounded = spec.model_copy(
        update={"model": spec.model.model_copy(update={"prediction_min": None})}
    )
    capped = spec.model_copy(
        update={"model": spec.model.model_copy(update={"prediction_max": 5.0})}
    )
    free = training.predict(model, rows, unbounded)
    assert free.max() > 5.0
    np.testing.assert_allclose(training.predict(model, rows, capped), np.clip(free, 0, 5.0))


def test_realised_losses_score_the_stored_predictions_of_one_version(features, spec, model):
    window = features[features.date >= "2024-07-01"].reset_index(drop=True)
    stored = training.prediction_frame(model, window, spec, model_version=3)
    older = training.prediction_frame(model, window, spec, model_version=2)
    older["prediction"] = 1e6  # another version's rows must not count
    last_day = window.date.max()

    errors = training.realised_losses(pd.concat([stored, older]), window, spec, model_version=3)

    labelled = training.attach_labels(window, spec).dropna(subset=[training.LABEL])
    assert len(labelled) == (window.date < last_day).sum()  # the last day's label is not here yet
    expected = labelled[training.LABEL].to_numpy() - training.predict(model, labelled, spec)
    np.testing.assert_allclose(np.sort(errors), np.sort(np.abs(expected)))


def test_realised_losses_use_the_stored_value_not_a_new_prediction(features, spec, model):
    window = features[features.date >= "2024-07-01"].reset_index(drop=True)
    stored = training.prediction_frame(model, window, spec, model_version=1)
    stored["prediction"] = 0.0
    errors = training.realised_losses(stored, window, spec, model_version=1)
    labelled = training.attach_labels(window, spec).dropna(subset=[training.LABEL])
    np.testing.assert_allclose(np.sort(errors), np.sort(labelled[training.LABEL].to_numpy()))


@pytest.mark.parametrize("columns", [None, ["store_id", "date"]])
def test_realised_losses_without_stored_predictions_are_empty(features, spec, columns):
    predictions = pd.DataFrame(columns=columns)
    errors = training.realised_losses(predictions, features.tail(20), spec, model_version=1)
    assert errors.shape == (0,)
