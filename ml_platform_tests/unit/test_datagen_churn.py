"""The synthetic churn generator: determinism, files, customer lifecycles, corruption and signal.

The lifecycle and signal tests matter as much as the file tests: the churn pipeline's promotion
gate and drift detection only mean something if tomorrow's cancellations are predictable from
today's snapshot (but not trivially) and a shift really moves the distribution.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from ml_platform.core import datagen_churn
from ml_platform.core.datagen import BAD_DATE
from ml_platform.core.datagen_churn import (
    COLUMNS,
    CORRUPTION_KINDS,
    PLANS,
    REGIONS,
    UNKNOWN_PLAN,
    ChurnConfig,
    corrupt_rows,
    generate_day,
    write_landing_files,
)

START = date(2024, 1, 1)
CUSTOMERS = 200
DAYS = 240
FEATURES = [
    "plan",
    "region",
    "tenure_days",
    "sessions",
    "minutes_used",
    "support_tickets",
    "payment_failures",
    "monthly_fee",
]


def generate_span(config: ChurnConfig, first: date, n: int) -> pd.DataFrame:
    frames = [generate_day(config, first + timedelta(days=i)) for i in range(n)]
    return pd.concat(frames, ignore_index=True)


def md5s(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths}


def slot(customer_ids: pd.Series) -> pd.Series:
    """Ids are C<generation><slot>: the last three digits name the slot a customer occupies."""
    return customer_ids.str[-3:].astype(int)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    """200 customer slots over 240 days, as generate_day returns them."""
    frame = generate_span(ChurnConfig(customers=CUSTOMERS), START, DAYS)
    frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    return frame


# --- determinism and files ---------------------------------------------------------------


def test_same_config_gives_identical_frames_and_another_seed_does_not() -> None:
    config = ChurnConfig(customers=50, corrupt_fraction=0.1)
    day = date(2024, 3, 5)
    first = generate_day(config, day)
    datagen_churn._block.cache_clear()  # recompute from scratch, not from the cache
    datagen_churn._block_end.cache_clear()

    pd.testing.assert_frame_equal(first, generate_day(config, day))
    assert not first.equals(generate_day(replace(config, seed=12), day))


def test_one_day_alone_equals_that_day_of_a_full_generation(tmp_path: Path) -> None:
    config = ChurnConfig(customers=40, days=45, corrupt_fraction=0.05)
    paths = write_landing_files(config, tmp_path)
    assert [p.name for p in paths[:2]] == ["2024-01-01.csv", "2024-01-02.csv"]
    datagen_churn._block.cache_clear()
    datagen_churn._block_end.cache_clear()

    alone = generate_day(config, START + timedelta(days=40))
    from_file = pd.read_csv(paths[40], dtype={"sessions": "Int64", "payment_failures": "Int64"})
    pd.testing.assert_frame_equal(from_file, alone, check_dtype=False)


def test_append_of_one_more_day_equals_a_full_generation(tmp_path: Path) -> None:
    config = ChurnConfig(customers=60, days=12, corrupt_fraction=0.05)
    full = write_landing_files(config, tmp_path / "full")
    write_landing_files(replace(config, days=11), tmp_path / "appended")
    appended = write_landing_files(replace(config, days=1), tmp_path / "appended", append=True)

    assert [p.name for p in appended] == ["2024-01-12.csv"]
    assert md5s(sorted((tmp_path / "appended").glob("*.csv"))) == md5s(full)
    assert not list((tmp_path / "appended").glob(".*.part"))  # no temp file left behind


def test_append_never_overwrites_and_reports_progress(tmp_path: Path) -> None:
    config = ChurnConfig(customers=10, days=2)
    (tmp_path / "2024-01-01.csv").write_text("kept\n")
    calls: list[tuple[int, int]] = []
    written = write_landing_files(
        config, tmp_path, append=True, progress=lambda *a: calls.append(a)
    )

    assert [p.name for p in written] == ["2024-01-02.csv", "2024-01-03.csv"]
    assert (tmp_path / "2024-01-01.csv").read_text() == "kept\n"
    assert calls == [(1, 2), (2, 2)]


def test_first_customers_do_not_depend_on_how_many_are_generated() -> None:
    day = date(2024, 6, 3)  # late enough that most slots have turned over at least once
    few = generate_day(ChurnConfig(customers=5), day)
    many = generate_day(ChurnConfig(customers=120), day)
    same_slots = many[slot(many["customer_id"]) <= 5].reset_index(drop=True)

    pd.testing.assert_frame_equal(few, same_slots)
    assert (few["customer_id"].str[:4] != "C000").any()  # turnover happened in these slots


def test_payment_failures_are_sometimes_blank_in_the_csv_and_nothing_else_is(
    tmp_path: Path,
) -> None:
    paths = write_landing_files(ChurnConfig(customers=CUSTOMERS, days=5), tmp_path)
    rows = [row for p in paths for row in csv.DictReader(p.open(newline=""))]

    blank = [c for c in COLUMNS if c != "payment_failures" and any(r[c] == "" for r in rows)]
    assert blank == []
    missing = sum(r["payment_failures"] == "" for r in rows) / len(rows)
    assert 0.01 <= missing <= 0.06, missing
    assert all(r["payment_failures"].isdigit() for r in rows if r["payment_failures"])


# --- schema and lifecycle ------------------------------------------------------------------------


def test_schema_dtypes_and_value_ranges(history: pd.DataFrame) -> None:
    day = generate_day(ChurnConfig(customers=CUSTOMERS), date(2024, 2, 1))
    assert tuple(day.columns) == COLUMNS
    assert day["customer_id"].is_monotonic_increasing and day["customer_id"].is_unique
    assert str(day["payment_failures"].dtype) == "Int64"
    for column in ("tenure_days", "sessions", "support_tickets", "churned"):
        assert day[column].dtype == np.int64, column

    assert (history.groupby("date").size() == CUSTOMERS).all()
    assert history["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert set(history["plan"]) == set(PLANS)
    assert set(history["region"]) == set(REGIONS)
    non_negative = ["tenure_days", "sessions", "minutes_used", "support_tickets"]
    assert (history[non_negative] >= 0).all().all()
    assert (history["payment_failures"].dropna() >= 0).all()
    assert set(history["churned"]) == {0, 1}
    assert ((history["minutes_used"] * 100).round(6) % 1 == 0).all()  # two decimals
    assert ((history["sessions"] == 0) <= (history["minutes_used"] == 0)).all()
    fees = history.groupby("plan")["monthly_fee"]
    assert (history["monthly_fee"] > 0).all()
    assert fees.max()["basic"] < fees.min()["standard"] <= fees.max()["standard"]
    assert fees.max()["standard"] < fees.min()["premium"]


def test_churn_row_is_each_customers_last_and_only_churn_ends_a_customer(
    history: pd.DataFrame,
) -> None:
    by_customer = history.groupby("customer_id")
    last_day = by_customer["date"].transform("max")
    assert (history.loc[history["churned"] == 1, "date"] == last_day[history["churned"] == 1]).all()
    assert by_customer["churned"].sum().max() == 1

    span = by_customer["date"].agg(["min", "max", "count"])
    assert ((span["max"] - span["min"]).dt.days + 1 == span["count"]).all()  # no gaps
    ended = span.index[span["max"] < history["date"].max()]
    assert by_customer["churned"].max()[ended].eq(1).all()  # nobody vanishes without churning
    tenure_steps = by_customer["tenure_days"].diff().dropna()
    assert (tenure_steps == 1).all()


def test_a_new_customer_with_tenure_zero_takes_a_churned_slot_the_next_day(
    history: pd.DataFrame,
) -> None:
    churned = history[(history["churned"] == 1) & (history["date"] < history["date"].max())]
    following = history.assign(date=history["date"] - pd.Timedelta(days=1))
    following = following.assign(slot=slot(following["customer_id"]))
    pairs = churned.assign(slot=slot(churned["customer_id"])).merge(
        following, on=["date", "slot"], suffixes=("", "_next")
    )

    assert len(pairs) == len(churned) > 100
    assert (pairs["customer_id_next"] != pairs["customer_id"]).all()
    assert (pairs["tenure_days_next"] == 0).all()
    first_seen = history.groupby("customer_id")["date"].min()
    assert (first_seen[pairs["customer_id_next"]].to_numpy() > pairs["date"].to_numpy()).all()


def test_daily_churn_rate_is_in_the_documented_range(history: pd.DataFrame) -> None:
    rate = history["churned"].mean()
    assert 0.015 <= rate <= 0.04, rate
    daily = history.groupby("date")["churned"].mean()
    assert daily.std() < 0.02  # no bursts: churn is spread over the days


# --- signal --------------------------------------------------------------------------------


def next_day_pairs(history: pd.DataFrame) -> pd.DataFrame:
    """Day-D features with day-D+1's `churned`, as the pipeline's horizon of one day pairs them."""
    tomorrow = history[["date", "customer_id", "churned"]].assign(
        date=history["date"] - pd.Timedelta(days=1)
    )
    pairs = history.drop(columns="churned").merge(tomorrow, on=["date", "customer_id"])
    return pairs.assign(
        plan=pairs["plan"].astype("category"),
        region=pairs["region"].astype("category"),
        payment_failures=pairs["payment_failures"].astype(float),
    )


def test_todays_snapshot_predicts_tomorrows_churn_but_not_trivially(
    history: pd.DataFrame,
) -> None:
    pairs = next_day_pairs(history)
    holdout = pairs["date"] > pairs["date"].max() - pd.Timedelta(days=60)
    train, test = pairs[~holdout], pairs[holdout]

    model = HistGradientBoostingClassifier(
        max_iter=100, learning_rate=0.05, categorical_features="from_dtype", random_state=0
    )
    with threadpool_limits(limits=1, user_api="openmp"):  # see test_datagen: spin-waiting
        model.fit(train[FEATURES], train["churned"])
        auc = roc_auc_score(test["churned"], model.predict_proba(test[FEATURES])[:, 1])

    assert auc > 0.7, auc
    assert auc < 0.95, f"too easy ({auc}): churn should keep noise no snapshot explains"


def test_each_documented_signal_moves_churn_the_documented_way(history: pd.DataFrame) -> None:
    pairs = next_day_pairs(history)

    def rate(mask: pd.Series) -> float:
        return pairs.loc[mask, "churned"].mean()

    assert rate(pairs["support_tickets"] > 0) > 2 * rate(pairs["support_tickets"] == 0)
    assert rate(pairs["payment_failures"] > 0) > 2 * rate(pairs["payment_failures"] == 0)
    assert rate(pairs["sessions"] == 0) > 2 * rate(pairs["sessions"] >= 3)
    assert rate(pairs["tenure_days"] < 14) > 1.5 * rate(pairs["tenure_days"] >= 90)


def test_shift_changes_the_distribution_from_shift_from_on_only(history: pd.DataFrame) -> None:
    shift_from = START + timedelta(days=150)
    shifted = ChurnConfig(customers=CUSTOMERS, shift_from=shift_from, shift_strength=0.5)
    base_before = history[history["date"] < pd.Timestamp(shift_from)].reset_index(drop=True)
    base_after = history[history["date"] >= pd.Timestamp(shift_from)]

    before = generate_span(shifted, START, 150)
    before["date"] = pd.to_datetime(before["date"])
    pd.testing.assert_frame_equal(before, base_before)

    after = generate_span(shifted, shift_from, 60)
    base_after = base_after[base_after["date"] < pd.Timestamp(shift_from + timedelta(days=60))]
    assert after["monthly_fee"].mean() > 1.2 * base_after["monthly_fee"].mean()
    assert after["sessions"].mean() < 0.8 * base_after["sessions"].mean()
    assert after["churned"].mean() > 1.3 * base_after["churned"].mean()


# --- corruption and validation ---------------------------------------------------------------


def test_corruption_makes_each_kind_in_the_expected_number_of_rows() -> None:
    day = date(2024, 4, 2)
    config = ChurnConfig(customers=100, corrupt_fraction=0.1)
    clean = generate_day(replace(config, corrupt_fraction=0.0), day)
    corrupt = generate_day(config, day)

    assert len(corrupt) == 100 + 2  # 10 bad rows, two of each kind; duplicates are appended
    body, duplicates = corrupt.iloc[:100], corrupt.iloc[100:]
    counts = {
        "negative_sessions": int((body["sessions"] < 0).sum()),
        "missing_value": int((body["sessions"].isna() | body["monthly_fee"].isna()).sum()),
        "unknown_plan": int((body["plan"] == UNKNOWN_PLAN).sum()),
        "bad_date": int((body["date"] == BAD_DATE).sum()),
        "duplicate": len(duplicates),
    }
    assert counts == dict.fromkeys(CORRUPTION_KINDS, 2)
    assert corrupt.duplicated().sum() == 2
    changed = (body.astype(str) != clean.astype(str)).any(axis=1)
    assert changed.sum() == 8  # every other row is untouched
    pd.testing.assert_frame_equal(corrupt_rows(clean, 0.0, np.random.default_rng(0)), clean)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("customers", 0, "customers must be in 1..999"),
        ("customers", 1000, "customers must be in 1..999"),
        ("days", -1, "days must be >= 0"),
        ("seed", -3, "seed must be >= 0"),
        ("corrupt_fraction", 1.5, r"corrupt_fraction must be in \[0, 1\]"),
        ("shift_strength", -1.0, "shift_strength must be > -1"),
    ],
)
def test_invalid_config_is_rejected_with_the_field_named(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ChurnConfig(**{field: value})


def test_a_day_before_start_is_rejected() -> None:
    with pytest.raises(ValueError, match="before the simulation start"):
        generate_day(ChurnConfig(), date(2023, 12, 31))
