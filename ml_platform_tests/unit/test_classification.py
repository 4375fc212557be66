"""Binary classification and categorical features, on the customer_churn generator's data.

The frames go the real way: generated CSV bytes → contract → feature recipe → training set.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from ml_platform.core import training
from ml_platform.core.contracts import read_landing_csv, validate_batch
from ml_platform.core.datagen_churn import ChurnConfig, generate_day
from ml_platform.core.features import build_features
from ml_platform.specs import SPEC_DIR, load_spec

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC_DIR / "customer_churn.yaml", REPO_ROOT)


@pytest.fixture(scope="module")
def features(spec):
    config = ChurnConfig(customers=150, days=150, start=spec.landing.start_date, seed=5)
    days = [config.start + timedelta(days=i) for i in range(config.days)]
    validated = []
    for day in days:
        buffer = io.StringIO()
        generate_day(config, day).to_csv(buffer, index=False)
        raw = read_landing_csv(buffer.getvalue().encode())
        validated.append(validate_batch(raw, spec.contract, day).valid)
    history = pd.concat(validated, ignore_index=True)
    assert history["payment_failures"].dtype == "Int64"  # nullable ints stay ints
    assert history["payment_failures"].isna().any()
    return build_features(history, spec, days)


@pytest.fixture(scope="module")
def training_set(features, spec):
    return training.build_training_set(features, spec)


@pytest.fixture(scope="module")
def model(training_set, spec):
    return training.fit(training_set, spec)


def test_classifier_beats_the_base_rate_on_every_metric(model, training_set, spec):
    evaluation = training.evaluate(model, training_set, spec)
    metrics = evaluation.metrics
    assert evaluation.loss_name == "log_loss"
    assert evaluation.loss == metrics["log_loss"] < evaluation.loss_baseline
    assert metrics["roc_auc"] > 0.65
    assert 0 <= metrics["brier"] < 0.1 and 0.5 < metrics["accuracy"] <= 1
    holdout = training.holdout(training_set)
    expected = log_loss(holdout[training.LABEL], training.predict(model, holdout, spec))
    assert metrics["log_loss"] == pytest.approx(expected, rel=1e-9)


def test_predictions_are_probabilities_with_a_class(model, features, spec):
    frame = training.prediction_frame(model, features.tail(300), spec, model_version=2)
    assert frame[training.PREDICTION].between(0, 1).all()
    expected = (frame[training.PREDICTION] >= spec.model.decision_threshold).astype("int64")
    assert frame[training.PREDICTED_CLASS].equals(expected)
    assert (frame[training.MODEL_VERSION] == 2).all()


def test_unseen_category_is_scored_not_rejected(model, features, spec):
    rows = features.tail(50).copy()
    rows["plan"] = "enterprise"  # never in training
    rows["region"] = None
    values = training.predict(model, rows, spec)
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()


def test_behaviour_payment_failures_and_tickets_raise_churn_risk(model, features, spec):
    rows = features.tail(400).copy()
    calm = rows.assign(payment_failures=0, support_tickets=0)
    troubled = rows.assign(payment_failures=3, support_tickets=4)
    calm_risk = training.predict(model, calm, spec).mean()
    assert training.predict(model, troubled, spec).mean() > calm_risk


def test_estimators_without_nan_support_get_an_imputer(training_set, spec):
    logistic = spec.model.model_copy(
        update={
            "estimator": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500},
            "skops_trusted_types": [],
        }
    )
    other = spec.model_copy(update={"model": logistic})
    model = training.fit(training_set, other)
    assert "features" in model.named_steps
    assert np.isfinite(training.predict(model, training.holdout(training_set), other)).all()


def test_the_saved_pipeline_loads_with_only_the_specs_trusted_types(model, spec):
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert sorted(untrusted) == sorted(spec.model.skops_trusted_types)


def test_one_class_training_window_is_a_clear_error(training_set, spec):
    only_zeros = training_set.assign(**{training.LABEL: 0.0})
    with pytest.raises(training.TrainingDataError, match="needs both classes"):
        training.fit(only_zeros, spec)


def test_row_losses_are_log_loss_for_a_classifier_and_absolute_error_otherwise(spec):
    labels, probs = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.0, 1.0])
    losses = training.row_losses(labels, probs, spec)
    assert np.isfinite(losses).all()  # a certain, wrong probability is large, not infinite
    assert losses[0] == pytest.approx(-np.log(0.9)) and losses[1] == pytest.approx(-np.log(0.8))
    sales = load_spec(SPEC_DIR / "sales_forecast.yaml", REPO_ROOT)
    assert list(training.row_losses(np.array([3.0, 1.0]), np.array([1.0, 4.0]), sales)) == [2, 3]


def test_realised_losses_score_stored_probabilities(model, features, spec):
    window = features[features["date"] >= features["date"].max() - pd.Timedelta(days=10)]
    stored = training.prediction_frame(model, window, spec, model_version=1)
    losses = training.realised_losses(stored, window, spec, model_version=1)
    labelled = training.attach_labels(window, spec).dropna(subset=[training.LABEL])
    assert len(losses) == len(labelled) > 0
    assert losses.mean() == pytest.approx(
        log_loss(labelled[training.LABEL], training.predict(model, labelled, spec), labels=[0, 1])
    )


def test_a_yes_no_target_is_encoded_once_for_the_whole_recipe(spec):
    """`isin: [no, yes]` + `positive_class: yes`: features, labels and losses all see 0/1."""
    columns = dict(spec.contract.columns)
    columns["churned"] = columns["churned"].model_copy(
        update={"dtype": "str", "isin": ["no", "yes"]}
    )
    contract = spec.contract.model_copy(update={"columns": columns})
    model_spec = spec.model.model_copy(update={"positive_class": "yes"})
    yes_no = spec.model_copy(update={"contract": contract, "model": model_spec})
    config = ChurnConfig(customers=150, days=90, start=spec.landing.start_date, seed=6)
    days = [config.start + timedelta(days=i) for i in range(config.days)]
    validated = []
    for day in days:
        frame = generate_day(config, day)
        frame["churned"] = frame["churned"].map({0: "no", 1: "yes"})
        raw = read_landing_csv(frame.to_csv(index=False).encode())
        validated.append(validate_batch(raw, yes_no.contract, day).valid)
    history = pd.concat(validated, ignore_index=True)
    assert set(history["churned"]) == {"no", "yes"}  # validated keeps the file's values
    features = build_features(history, yes_no, days)
    assert set(features["churned"].unique()) == {0, 1}
    assert features["churned"].sum() == (history["churned"] == "yes").sum()
    model = training.fit(training.build_training_set(features, yes_no), yes_no)
    evaluation = training.evaluate(model, training.build_training_set(features, yes_no), yes_no)
    assert evaluation.loss < evaluation.loss_baseline
