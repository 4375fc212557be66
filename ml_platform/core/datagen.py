"""Deterministic synthetic daily retail sales, written as one landing CSV per day.

The demo, tests and benchmarks need realistic data without shipping any: store and product levels,
weekly and yearly seasonality, holidays, price elasticity, multi-day promotion campaigns,
overdispersed counts, an optional distribution shift and optional corrupt rows.

Every value for a day is a pure function of `(config, day)`. Random streams are keyed on the seed
plus what they describe (a store attribute, an ISO week, a day ordinal) instead of being drawn in
sequence, so one day can be generated alone, `--append` of one more day matches a full generation,
and the first N stores are the same whatever `stores` is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.core.storage import atomic_write

COLUMNS: tuple[str, ...] = ("date", "store_id", "product_id", "units_sold", "price", "promo")
DEFAULT_HOLIDAYS: tuple[str, ...] = ("01-01", "05-01", "07-04", "11-11", "12-24", "12-25", "12-31")
CORRUPTION_KINDS: tuple[str, ...] = (
    "negative_units",
    "missing_value",
    "unknown_store",
    "bad_date",
    "duplicate",
)
UNKNOWN_STORE_ID = "ZZ-404"
BAD_DATE = "2024-13-45"

_LANDING_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})\.csv$")
_HOLIDAY_FORMAT = re.compile(r"^\d{2}-\d{2}$")

# Stream tags keep each random quantity on its own seed, so adding one never moves another.
_STREAM_STORE_LEVEL = 1
_STREAM_STORE_WEEKDAY = 2
_STREAM_STORE_PRICE = 3
_STREAM_PRODUCT = 4
_STREAM_PRICE_PHASE = 5
_STREAM_CAMPAIGN = 6
_STREAM_DAILY_NOISE = 7
_STREAM_CORRUPTION = 8
_STREAM_STORE_DRIFT = 9
_STREAM_WEEKDAY_DRIFT = 10

# Demand model constants: decisions about realism, not tunables users need.
_WEEKDAY_PROFILE = np.array([0.85, 0.85, 0.90, 0.95, 1.10, 1.35, 1.20])  # Monday first
_WEEKDAY_STORE_SIGMA = 0.15  # stores differ in weekly shape, which keeps seasonal naive honest
_YEARLY_AMPLITUDE = 0.20
_YEARLY_PEAK_DAY_OF_YEAR = 350  # mid December
# Promotion and holiday effects are what a seasonal-naive forecast misses and a lag model with
# promo and calendar features catches. A +10 % promo lift on top of the price cut (x1.54 in all)
# and a x1.3 holiday lift leave the model ~20-30 % below seasonal naive in MAE; a +40 % lift
# (x1.96) put it ~40 % below, which makes the baseline a straw man for the promotion gate.
_HOLIDAY_LIFT = 1.3
_PROMO_PROBABILITY = 0.15  # per (store, product, ISO week) campaign
_PROMO_LIFT = 1.1
_PROMO_PRICE_FACTOR = 0.8
_PRICE_ELASTICITY = -1.5
_NOISE_GAMMA_SHAPE = 20.0  # Poisson-gamma mixing: coefficient of variation 1/sqrt(shape)
_DRIFT_KNOT_DAYS = 56  # slow per-store level drift, linearly interpolated between knots
_DRIFT_SIGMA = 0.08
_WEEKDAY_DRIFT_KNOT_DAYS = 91  # store weekly shapes also change slowly (a new competitor, ...)
_WEEKDAY_DRIFT_SIGMA = 0.10


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate; frozen, so a config is a value that can key caches and reruns."""

    stores: int = 20
    products: int = 1
    start: date = date(2024, 1, 1)
    days: int = 730
    seed: int = 7
    holidays: tuple[str, ...] = DEFAULT_HOLIDAYS  # "MM-DD"
    shift_from: date | None = None
    shift_strength: float = 0.5
    corrupt_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.stores <= 9999:
            raise ValueError(f"stores must be in 1..9999 (ids are S0001..S9999), got {self.stores}")
        if not 1 <= self.products <= 99:
            raise ValueError(f"products must be in 1..99 (ids are P01..P99), got {self.products}")
        if self.days < 0:
            raise ValueError(f"days must be >= 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seed sequences need it), got {self.seed}")
        if not 0.0 <= self.corrupt_fraction <= 1.0:
            raise ValueError(f"corrupt_fraction must be in [0, 1], got {self.corrupt_fraction}")
        if self.shift_strength <= -1.0:
            raise ValueError(f"shift_strength must be > -1, got {self.shift_strength}")
        bad = [h for h in self.holidays if not _HOLIDAY_FORMAT.match(h)]
        if bad:
            raise ValueError(f"holidays must be 'MM-DD' strings, got {bad}")


@dataclass(frozen=True)
class _StaticEffects:
    store_ids: np.ndarray  # (stores,) str
    product_ids: np.ndarray  # (products,) str
    store_level: np.ndarray  # (stores,) mean units per day before other effects
    store_weekday: np.ndarray  # (stores, 7) multiplicative weekly shape
    store_price: np.ndarray  # (stores,) price level relative to the product reference
    product_factor: np.ndarray  # (products,)
    reference_price: np.ndarray  # (products,)
    price_phase: np.ndarray  # (products, 2) phases of the weekly price wiggle


def _rng(*key: int) -> np.random.Generator:
    """A generator keyed on what it describes; one attribute per key keeps prefixes stable."""
    return np.random.default_rng(list(key))


@lru_cache(maxsize=16)
def _static_effects(seed: int, stores: int, products: int) -> _StaticEffects:
    """Per-store and per-product effects depend on the seed only, never on the day."""
    # exp(N(4, 0.5)): median 55 units/day, 95 % of stores between 20 and 145.
    store_level = np.exp(_rng(seed, _STREAM_STORE_LEVEL).normal(4.0, 0.5, stores))
    weekday_noise = np.stack(
        [
            _rng(seed, _STREAM_STORE_WEEKDAY, d).normal(0.0, _WEEKDAY_STORE_SIGMA, stores)
            for d in range(7)
        ],
        axis=1,
    )
    store_weekday = _WEEKDAY_PROFILE * np.exp(weekday_noise)
    store_weekday /= store_weekday.mean(axis=1, keepdims=True)
    store_price = np.exp(_rng(seed, _STREAM_STORE_PRICE).normal(0.0, 0.05, stores))
    product_rng = _rng(seed, _STREAM_PRODUCT)
    product_factor = np.exp(product_rng.normal(0.0, 0.4, 99))[:products]
    product_factor[0] = 1.0  # the single-product default keeps store levels as drawn
    reference_price = np.round(np.exp(_rng(seed, _STREAM_PRODUCT, 1).normal(2.0, 0.6, 99)), 2)
    price_phase = _rng(seed, _STREAM_PRICE_PHASE).uniform(0.0, 2 * math.pi, (99, 2))
    return _StaticEffects(
        store_ids=np.array([f"S{s:04d}" for s in range(1, stores + 1)]),
        product_ids=np.array([f"P{p:02d}" for p in range(1, products + 1)]),
        store_level=store_level,
        store_weekday=store_weekday,
        store_price=store_price,
        product_factor=product_factor,
        reference_price=np.maximum(reference_price[:products], 0.5),
        price_phase=price_phase[:products],
    )


def _slow_log_drift(
    key: tuple[int, ...], ordinal: int, knot_days: int, sigma: float, size: int
) -> np.ndarray:
    """Value noise: random knots every `knot_days`, linearly interpolated between them.

    Latent state that moves slowly but is computable for any day alone, without a recursion.
    """
    knot, offset = divmod(ordinal, knot_days)
    weight = offset / knot_days
    left = _rng(*key, knot).normal(0.0, sigma, size)
    right = _rng(*key, knot + 1).normal(0.0, sigma, size)
    return (1 - weight) * left + weight * right


def _store_drift(seed: int, stores: int, ordinal: int) -> np.ndarray:
    """Slow multiplicative level drift per store."""
    key = (seed, _STREAM_STORE_DRIFT)
    return np.exp(_slow_log_drift(key, ordinal, _DRIFT_KNOT_DAYS, _DRIFT_SIGMA, stores))


def _store_weekday_drift(seed: int, stores: int, ordinal: int, weekday: int) -> np.ndarray:
    """Slow drift of each store's weekly shape: what a same-weekday-last-week forecast tracks."""
    key = (seed, _STREAM_WEEKDAY_DRIFT, weekday)
    log_drift = _slow_log_drift(
        key, ordinal, _WEEKDAY_DRIFT_KNOT_DAYS, _WEEKDAY_DRIFT_SIGMA, stores
    )
    return np.exp(log_drift)


def _campaign_draws(seed: int, day: date, stores: int, products: int) -> np.ndarray:
    """One uniform per (store, product) and ISO week: a campaign runs the whole week."""
    iso_year, iso_week, _ = day.isocalendar()
    return _rng(seed, _STREAM_CAMPAIGN, iso_year, iso_week).random((stores, products))


def _weekly_price_wiggle(day: date, phase: np.ndarray) -> np.ndarray:
    """A slow, deterministic price movement that changes once a week (on Monday)."""
    week = (day.toordinal() - day.weekday()) // 7
    return (
        1.0
        + 0.04 * np.sin(2 * math.pi * week / 9 + phase[:, 0])
        + 0.03 * np.sin(2 * math.pi * week / 23 + phase[:, 1])
    )


def generate_day(config: GeneratorConfig, day: date) -> pd.DataFrame:
    """The rows of one day's landing file, one per (store, product), deterministic in (config, day).

    After `shift_from` the demand level is multiplied by `1 + shift_strength`, prices rise by
    `50 % * shift_strength` and the campaign probability by `200 % * shift_strength`. Price
    elasticity is measured against the current regime's reference price, so the price rise reads
    as inflation and does not cancel the demand shift.
    """
    static = _static_effects(config.seed, config.stores, config.products)
    stores, products = config.stores, config.products
    ordinal = day.toordinal()
    shifted = config.shift_from is not None and day >= config.shift_from
    strength = config.shift_strength if shifted else 0.0

    promo_probability = min(1.0, _PROMO_PROBABILITY * (1.0 + 2.0 * strength))
    promo = _campaign_draws(config.seed, day, stores, products) < promo_probability

    regime_reference = static.reference_price * (1.0 + 0.5 * strength)  # (products,)
    regular_price = (
        regime_reference[None, :]
        * static.store_price[:, None]
        * _weekly_price_wiggle(day, static.price_phase)[None, :]
    )
    price = np.round(np.where(promo, regular_price * _PROMO_PRICE_FACTOR, regular_price), 2)
    price = np.maximum(price, 0.01)

    day_of_year = day.timetuple().tm_yday
    yearly = 1.0 + _YEARLY_AMPLITUDE * math.cos(
        2 * math.pi * (day_of_year - _YEARLY_PEAK_DAY_OF_YEAR) / 365.25
    )
    holiday = _HOLIDAY_LIFT if day.strftime("%m-%d") in config.holidays else 1.0
    store_mean = (
        static.store_level
        * static.store_weekday[:, day.weekday()]
        * _store_drift(config.seed, stores, ordinal)
        * _store_weekday_drift(config.seed, stores, ordinal, day.weekday())
        * yearly
        * holiday
        * (1.0 + strength)
    )
    mean = (
        store_mean[:, None]
        * static.product_factor[None, :]
        * (price / regime_reference[None, :]) ** _PRICE_ELASTICITY
        * np.where(promo, _PROMO_LIFT, 1.0)
    )

    # Poisson-gamma (negative binomial) counts: integers with overdispersion.
    gamma = _rng(config.seed, _STREAM_DAILY_NOISE, ordinal, 0).gamma(
        _NOISE_GAMMA_SHAPE, 1.0 / _NOISE_GAMMA_SHAPE, mean.shape
    )
    units = _rng(config.seed, _STREAM_DAILY_NOISE, ordinal, 1).poisson(mean * gamma)

    frame = pd.DataFrame(
        {
            "date": np.full(stores * products, day.isoformat()),
            "store_id": np.repeat(static.store_ids, products),
            "product_id": np.tile(static.product_ids, stores),
            "units_sold": units.ravel().astype(np.int64),
            "price": price.ravel(),
            "promo": promo.ravel().astype(np.int64),
        },
        columns=list(COLUMNS),
    )
    if config.corrupt_fraction > 0:
        frame = corrupt_rows(
            frame, config.corrupt_fraction, _rng(config.seed, _STREAM_CORRUPTION, ordinal)
        )
    return frame


def corrupt_rows(frame: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """A copy with `round(fraction * len(frame))` bad rows, cycling through `CORRUPTION_KINDS`.

    Data contracts need every failure mode present to be tested. Duplicates are appended copies of
    rows left otherwise intact, so they are exact duplicates (a broken uniqueness key) and not
    also bad in some other way.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out = frame.copy()
    n_bad = min(round(fraction * len(frame)), len(frame))
    if n_bad == 0:
        return out
    kinds = np.array(CORRUPTION_KINDS)[np.arange(n_bad) % len(CORRUPTION_KINDS)]
    rows = rng.choice(len(frame), size=n_bad, replace=False)
    index = out.index

    negative = index[rows[kinds == "negative_units"]]
    out.loc[negative, "units_sold"] = -out.loc[negative, "units_sold"].abs() - 1

    missing = rows[kinds == "missing_value"]
    if len(missing):
        out["units_sold"] = out["units_sold"].astype("Int64")  # keeps ints as ints in the CSV
        in_units = rng.random(len(missing)) < 0.5
        out.loc[index[missing[in_units]], "units_sold"] = pd.NA
        out.loc[index[missing[~in_units]], "price"] = np.nan

    out.loc[index[rows[kinds == "unknown_store"]], "store_id"] = UNKNOWN_STORE_ID
    out.loc[index[rows[kinds == "bad_date"]], "date"] = BAD_DATE

    duplicated = out.loc[index[rows[kinds == "duplicate"]]]
    return pd.concat([out, duplicated], ignore_index=True)


def landing_path(directory: Path, day: date) -> Path:
    """Where the landing file of one day lives; the landing sensor relies on this name."""
    return directory / f"{day.isoformat()}.csv"


def latest_landing_day(directory: Path) -> date | None:
    """The newest day with a `YYYY-MM-DD.csv` file; other names (temp files) are ignored."""
    days = []
    if directory.is_dir():
        for path in directory.iterdir():
            match = _LANDING_NAME.match(path.name)
            if match:
                try:
                    days.append(date.fromisoformat(match.group(1)))
                except ValueError:
                    continue  # e.g. 2024-13-45.csv is not a landing file of ours
    return max(days, default=None)


def write_landing_files(
    config: GeneratorConfig,
    directory: Path,
    *,
    append: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write `config.days` daily CSVs atomically, so a sensor never sees a half-written file.

    With `append`, generation continues the day after the newest landing file (or at
    `config.start` when there is none) and an existing file is never replaced.
    """
    return write_daily_files(
        lambda day: generate_day(config, day),
        config.start,
        config.days,
        directory,
        append=append,
        progress=progress,
    )


def write_daily_files(
    generate: Callable[[date], pd.DataFrame],
    start: date,
    days: int,
    directory: Path,
    *,
    append: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """`days` landing files from `generate(day)`, written atomically (any generator's files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    first = start
    if append:
        latest = latest_landing_day(directory)
        if latest is not None:
            first = latest + timedelta(days=1)
    written: list[Path] = []
    for i in range(days):
        day = first + timedelta(days=i)
        target = landing_path(directory, day)
        frame = generate(day)
        csv = frame.to_csv(index=False, float_format="%.2f", lineterminator="\n").encode()
        atomic_write(target, csv, overwrite=not append, fsync=False)  # synthetic: no fsync needed
        written.append(target)
        if progress is not None:
            progress(i + 1, days)
    return written
