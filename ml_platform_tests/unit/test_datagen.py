"""The synthetic sales generator: determinism, file handling, corruption and behaviour.

The behavioural tests matter as much as the file tests: the platform's promotion gate and drift
detection are only meaningful if the data has real structure (seasonality, promotions, a shift)
that a model can learn and a baseline cannot fully capture.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from ml_platform.core.datagen import (
    BAD_DATE,
    COLUMNS,
    UNKNOWN_STORE_ID,
    GeneratorConfig,
    corrupt_rows,
    generate_day,
    write_landing_files,
)

START = date(2024, 1, 1)


def read_landing(directory: Path) -> pd.DataFrame:
    """All landing files of a directory as one frame, as a consumer would parse them."""
    paths = sorted(directory.glob("????-??-??.csv"))
    frame = pd.concat([pd.read_csv(p, dtype={"store_id": str}) for p in paths], ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    return frame


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Twenty stores over 400 days, written as real landing files and read back."""
    directory = tmp_path_factory.mktemp("landing")
    write_landing_files(GeneratorConfig(stores=20, days=400, start=START), directory)
    return read_landing(directory)


# --- determinism and files ---------------------------------------------------------------


def test_same_config_writes_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    config = GeneratorConfig(stores=15, days=5, corrupt_fraction=0.1)
    first = write_landing_files(config, tmp_path / "a")
    second = write_landing_files(config, tmp_path / "b")
    other = write_landing_files(GeneratorConfig(stores=15, days=5, seed=8), tmp_path / "c")

    assert [p.name for p in first] == [f"2024-01-0{d}.csv" for d in range(1, 6)]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert first[0].read_bytes() != other[0].read_bytes()


def test_one_day_alone_equals_that_day_of_a_full_generation(tmp_path: Path) -> None:
    config = GeneratorConfig(stores=12, products=3, days=40, corrupt_fraction=0.05)
    paths = write_landing_files(config, tmp_path)
    day = START + timedelta(days=33)

    from_file = pd.read_csv(paths[33], dtype={"units_sold": "Int64"}, keep_default_na=True)
    alone = generate_day(config, day)

    pd.testing.assert_frame_equal(from_file, alone, check_dtype=False)


def test_first_stores_do_not_depend_on_how_many_stores_are_generated() -> None:
    few = generate_day(GeneratorConfig(stores=5), date(2024, 6, 3))
    many = generate_day(GeneratorConfig(stores=50), date(2024, 6, 3))
    pd.testing.assert_frame_equal(few, many.iloc[:5])


def test_append_continues_after_latest_file_and_never_overwrites(tmp_path: Path) -> None:
    full = write_landing_files(GeneratorConfig(stores=8, days=7), tmp_path / "full")
    directory = tmp_path / "landing"
    existing = write_landing_files(GeneratorConfig(stores=8, days=4), directory)
    before = {p: p.read_bytes() for p in existing}
    for stray in ("notes.csv", "2025-13-45.csv", ".2030-01-01.csv.part", "2030-01-01.txt"):
        (directory / stray).write_text("not a landing file")

    calls: list[tuple[int, int]] = []
    appended = write_landing_files(
        GeneratorConfig(stores=8, days=3),
        directory,
        append=True,
        progress=lambda *a: calls.append(a),
    )

    assert [p.name for p in appended] == ["2024-01-05.csv", "2024-01-06.csv", "2024-01-07.csv"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert {p: p.read_bytes() for p in existing} == before
    assert [p.read_bytes() for p in appended] == [p.read_bytes() for p in full[4:]]
    assert [p.name for p in directory.glob(".*")] == [".2030-01-01.csv.part"]  # no temp leftovers


def test_append_into_an_empty_directory_starts_at_config_start(tmp_path: Path) -> None:
    config = GeneratorConfig(stores=3, days=2, start=date(2024, 2, 28))
    appended = write_landing_files(config, tmp_path / "new", append=True)
    assert [p.name for p in appended] == ["2024-02-28.csv", "2024-02-29.csv"]


def test_file_has_contract_header_and_one_row_per_store_and_product(tmp_path: Path) -> None:
    (path,) = write_landing_files(GeneratorConfig(stores=11, products=2, days=1), tmp_path)
    lines = path.read_text().splitlines()

    assert lines[0] == "date,store_id,product_id,units_sold,price,promo"
    assert len(lines) == 1 + 11 * 2
    row = re.compile(r"^2024-01-01,S\d{4},P\d{2},\d+,\d+\.\d{2},[01]$")
    assert all(row.match(line) for line in lines[1:]), lines[1:4]
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(COLUMNS)
    assert not frame.duplicated(["date", "store_id", "product_id"]).any()


def test_clean_data_has_no_invalid_values(history: pd.DataFrame) -> None:
    assert len(history) == 20 * 400
    assert not history.isna().any().any()
    assert (history["units_sold"] >= 0).all()
    assert (history["price"] > 0).all()
    assert set(history["promo"]) == {0, 1}
    assert history["store_id"].str.fullmatch(r"S\d{4}").all()
    assert 20 <= history.groupby("store_id")["units_sold"].mean().median() <= 200


def test_invalid_config_is_rejected_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="holidays"):
        GeneratorConfig(holidays=("12/25",))
    with pytest.raises(ValueError, match="stores"):
        GeneratorConfig(stores=0)
    with pytest.raises(ValueError, match="corrupt_fraction"):
        GeneratorConfig(corrupt_fraction=1.5)


# --- corruption ------------------------------------------------------------------------------


def test_corrupt_rows_makes_each_kind_in_the_requested_amount() -> None:
    clean = generate_day(GeneratorConfig(stores=1000), date(2024, 5, 2))
    corrupt = corrupt_rows(clean, 0.1, np.random.default_rng(0))

    body, duplicates = corrupt.iloc[: len(clean)], corrupt.iloc[len(clean) :]
    missing = body["units_sold"].isna() | body["price"].isna()
    counts = {
        "negative_units": int((body["units_sold"] < 0).sum()),
        "missing_value": int(missing.sum()),
        "unknown_store": int((body["store_id"] == UNKNOWN_STORE_ID).sum()),
        "bad_date": int((body["date"] == BAD_DATE).sum()),
        "duplicate": len(duplicates),
    }
    assert counts == dict.fromkeys(counts, 20)
    assert body["units_sold"].isna().any() and body["price"].isna().any()
    assert duplicates.merge(clean, how="inner").shape[0] == 20  # exact copies of clean rows
    assert corrupt.duplicated().sum() == 20
    assert clean.equals(generate_day(GeneratorConfig(stores=1000), date(2024, 5, 2)))  # untouched


def test_corrupt_rows_with_zero_fraction_is_an_identical_copy() -> None:
    clean = generate_day(GeneratorConfig(stores=30), date(2024, 5, 2))
    pd.testing.assert_frame_equal(corrupt_rows(clean, 0.0, np.random.default_rng(0)), clean)


def test_corrupt_files_keep_integers_as_integers(tmp_path: Path) -> None:
    config = GeneratorConfig(stores=200, days=2, corrupt_fraction=0.05)
    for path in write_landing_files(config, tmp_path):
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert len(raw) == 200 + 2  # 10 bad rows per day, two of them appended duplicates
        assert (raw["units_sold"] == "").sum() + (raw["price"] == "").sum() == 2
        assert raw["units_sold"].str.fullmatch(r"-?\d*").all()  # no "12.0" from a float column
        assert (raw["store_id"] == UNKNOWN_STORE_ID).sum() == 2
        assert (raw["date"] == BAD_DATE).sum() == 2
        assert raw["units_sold"].str.startswith("-").sum() == 2


# --- behaviour -------------------------------------------------------------------------------


def test_shift_raises_units_price_and_promo_rate_from_shift_from_on() -> None:
    shift_from = date(2024, 4, 1)
    base = GeneratorConfig(stores=40)
    shifted = GeneratorConfig(stores=40, shift_from=shift_from, shift_strength=0.5)

    def days(config: GeneratorConfig, first: date, n: int) -> pd.DataFrame:
        frames = [generate_day(config, first + timedelta(days=i)) for i in range(n)]
        return pd.concat(frames, ignore_index=True)

    before, after = days(shifted, date(2024, 3, 4), 28), days(shifted, shift_from, 28)
    pd.testing.assert_frame_equal(before, days(base, date(2024, 3, 4), 28))
    assert after["units_sold"].mean() > 1.3 * before["units_sold"].mean()
    assert after["price"].mean() > 1.15 * before["price"].mean()
    assert after["promo"].mean() > 1.5 * before["promo"].mean()


def test_weekends_sell_more_than_weekdays(history: pd.DataFrame) -> None:
    weekend = history["date"].dt.dayofweek >= 5
    assert (
        history.loc[weekend, "units_sold"].mean()
        > 1.15 * history.loc[~weekend, "units_sold"].mean()
    )


def test_december_sells_more_than_june(history: pd.DataFrame) -> None:
    month = history["date"].dt.month
    assert (
        history.loc[month == 12, "units_sold"].mean() > history.loc[month == 6, "units_sold"].mean()
    )


def test_holidays_sell_more_than_the_same_weekday_a_week_around(history: pd.DataFrame) -> None:
    daily = history.groupby("date")["units_sold"].sum()
    holidays = [d for d in daily.index if d.strftime("%m-%d") in GeneratorConfig().holidays]
    around = [d + timedelta(days=k) for d in holidays for k in (-7, 7)]
    around = [d for d in around if d in daily.index and d not in holidays]
    assert daily[holidays].mean() > 1.15 * daily[around].mean()


def test_a_store_sells_more_in_promotion_weeks(history: pd.DataFrame) -> None:
    by_store = history.groupby(["store_id", "promo"])["units_sold"].mean().unstack("promo")
    lift = by_store[1] / by_store[0]
    assert (lift > 1.0).mean() >= 0.9, lift.describe()
    assert lift.median() > 1.3


def test_promotions_run_in_whole_iso_week_campaigns(history: pd.DataFrame) -> None:
    week = history["date"].dt.isocalendar()
    keys = [history["store_id"], week["year"], week["week"]]
    per_week = history.groupby(keys)["promo"].agg(["min", "max"])
    assert (per_week["min"] == per_week["max"]).all()
    assert 0.08 <= history["promo"].mean() <= 0.25


def test_lag_feature_model_beats_seasonal_naive_by_an_honest_margin(
    history: pd.DataFrame,
) -> None:
    """Next-day units from lags, rolling means, calendar, price and promo, as the pipeline does."""
    frame = history.sort_values(["store_id", "date"]).reset_index(drop=True)
    units = frame.groupby("store_id")["units_sold"]
    target_day = frame["date"] + pd.Timedelta(days=1)
    features = pd.DataFrame(
        {
            **{f"lag_{k}": units.shift(k - 1) for k in (1, 2, 7, 14)},
            **{
                f"rolling_mean_{w}": units.transform(lambda s, w=w: s.rolling(w).mean())
                for w in (7, 28)
            },
            "day_of_week": target_day.dt.dayofweek,
            "day_of_month": target_day.dt.day,
            "month": target_day.dt.month,
            "is_holiday": target_day.dt.strftime("%m-%d").isin(GeneratorConfig().holidays),
            "price": frame["price"],
            "promo": frame["promo"],
        }
    )
    features["target"] = units.shift(-1)
    features["date"] = frame["date"]
    features = features.dropna()
    holdout = features["date"] > features["date"].max() - pd.Timedelta(days=56)
    train, test = features[~holdout], features[holdout]
    columns = [c for c in features.columns if c not in ("target", "date")]

    model = HistGradientBoostingRegressor(max_iter=150, learning_rate=0.05, random_state=0)
    # One OpenMP thread: on a busy 2-core machine libgomp's spin-waiting makes a small fit take
    # minutes instead of a fraction of a second.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(train[columns], train["target"])
        model_mae = np.abs(model.predict(test[columns]) - test["target"]).mean()
    naive_mae = np.abs(test["lag_7"] - test["target"]).mean()

    assert model_mae < 0.95 * naive_mae, (model_mae, naive_mae)
    assert model_mae > 0.5 * naive_mae, "too easy: the data has no noise a model cannot explain"
    assert naive_mae < 0.5 * test["target"].mean(), "seasonal naive should be a fair baseline"
