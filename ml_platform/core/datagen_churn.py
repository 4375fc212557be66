"""Deterministic synthetic daily customer snapshots for the churn pipeline, one CSV per day.

The churn demo needs a binary target that is predictable but not trivially so: each customer has
an activity level, a taste for support tickets and a payment risk; some customers drift into
disengagement (sessions fall day after day) and the chance to cancel tomorrow rises with what is
observable today (few sessions, tickets, payment failures, short tenure, a high fee).

Customers occupy slots. A slot's customer cancels (`churned` = 1 on its last row) and the next
day a new customer (new id, tenure 0) takes the slot. Unlike the sales generator, a day depends on
the days before it, so the history is simulated from a burn-in before `config.start` and cached in
blocks; every random stream is keyed on the seed, what it describes and the day ordinal, and draws
one value per slot in slot order, so a day is still a pure function of `(config, day)`, `--append`
matches a full generation and the first N slots are the same whatever `customers` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ml_platform.core.datagen import BAD_DATE, write_daily_files

COLUMNS: tuple[str, ...] = (
    "date",
    "customer_id",
    "plan",
    "region",
    "tenure_days",
    "sessions",
    "minutes_used",
    "support_tickets",
    "payment_failures",
    "monthly_fee",
    "churned",
)
PLANS: tuple[str, ...] = ("basic", "standard", "premium")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
CORRUPTION_KINDS: tuple[str, ...] = (
    "negative_sessions",
    "missing_value",
    "unknown_plan",
    "bad_date",
    "duplicate",
)
UNKNOWN_PLAN = "platinum"
MAX_CUSTOMERS = 999  # ids are C<generation:03d><slot:03d>

# Stream tags keep each random quantity on its own seed, so adding one never moves another.
_STREAM_NEW = 1  # attributes of a customer who joins a slot
_STREAM_DAILY = 2  # daily behaviour
_STREAM_CORRUPTION = 3

# Behaviour constants: decisions about realism, not tunables users need.
_BURN_IN_DAYS = 90  # the history starts before `config.start` so day one is already in balance
_BLOCK_DAYS = 32
_PLAN_SHARE = np.array([0.5, 0.35, 0.15])
_PLAN_FEE = np.array([9.99, 19.99, 39.99])
_PLAN_ACTIVITY = np.array([0.8, 1.0, 1.3])
_PLAN_HAZARD = np.array([0.2, 0.0, -0.3])
_REGION_SHARE = np.array([0.25, 0.2, 0.2, 0.2, 0.15])
_REGION_HAZARD = np.array([0.0, 0.15, -0.1, 0.1, -0.05])
_WEEKDAY_ACTIVITY = np.array([1.0, 1.0, 1.0, 1.0, 0.95, 0.8, 0.85])  # Monday first
_DISCOUNT_SHARE, _DISCOUNT_FACTOR = 0.2, 0.85  # legacy customers on an old, lower price
_DISENGAGE_PROBABILITY = 0.006  # per day; a disengaged customer's sessions fall ~25 % a day
_RECOVER_PROBABILITY = 0.03
_PAYMENT_MISSING = 0.03  # the billing system did not report: a blank, not a zero
_HAZARD_INTERCEPT = -3.8  # gives a daily churn rate of about 2.5 %


@dataclass(frozen=True)
class ChurnConfig:
    """What to generate; frozen, so a config is a value that can key caches and reruns."""

    customers: int = 300
    start: date = date(2024, 1, 1)
    days: int = 730
    seed: int = 11
    shift_from: date | None = None
    shift_strength: float = 0.5
    corrupt_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.customers <= MAX_CUSTOMERS:
            raise ValueError(
                f"customers must be in 1..{MAX_CUSTOMERS} (one id digit triple per slot), "
                f"got {self.customers}"
            )
        if self.days < 0:
            raise ValueError(f"days must be >= 0, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy seed sequences need it), got {self.seed}")
        if not 0.0 <= self.corrupt_fraction <= 1.0:
            raise ValueError(f"corrupt_fraction must be in [0, 1], got {self.corrupt_fraction}")
        if self.shift_strength <= -1.0:
            raise ValueError(f"shift_strength must be > -1, got {self.shift_strength}")


# One simulated day, per slot: the customer's attributes (see `_joiners`), latent state
# (`disengaged`, `log_engagement`), what the file shows and `payment_failures` before blanking.
_Day = dict[str, np.ndarray]


def _rng(*key: int) -> np.random.Generator:
    """A generator keyed on what it describes; one value per slot keeps prefixes stable."""
    return np.random.default_rng(list(key))


def _joiners(seed: int, ordinal: int, n: int) -> dict[str, np.ndarray]:
    """Attributes for a customer joining each slot today; only slots that turn over use them."""
    u_plan, u_region, u_discount = _rng(seed, _STREAM_NEW, ordinal, 0).random((n, 3)).T
    z = _rng(seed, _STREAM_NEW, ordinal, 1).standard_normal((n, 5)).T
    plan = np.minimum(np.searchsorted(np.cumsum(_PLAN_SHARE), u_plan, side="right"), len(PLANS) - 1)
    region = np.searchsorted(np.cumsum(_REGION_SHARE), u_region, side="right")
    return {
        "plan": plan,
        "region": np.minimum(region, len(REGIONS) - 1),
        "discount": u_discount < _DISCOUNT_SHARE,
        "activity": 3.0 * np.exp(0.5 * z[0]) * _PLAN_ACTIVITY[plan],
        "minutes_per_session": 15.0 * np.exp(0.35 * z[1]),
        "ticket_rate": 0.03 * np.exp(0.7 * z[2]),
        "payment_risk": np.minimum(0.006 * np.exp(z[3]), 0.3),
        "log_engagement": 0.2 * z[4],
    }


def _hazard(previous: _Day, strength: float) -> np.ndarray:
    """Probability to cancel today from what was observable yesterday (plus latent disengagement).

    The fee term compares the fee with the plan's original list price, so a price rise under the
    shift raises churn while legacy discounts lower it.
    """
    logit = (
        _HAZARD_INTERCEPT
        + 1.2 * np.minimum(previous["tickets"], 3)
        + 1.5 * np.minimum(previous["payment_failures"], 2)
        - 1.0 * np.log1p(previous["sessions"])
        + 1.5 * previous["disengaged"]
        + 1.5 * np.exp(-previous["tenure"] / 30.0)
        + _PLAN_HAZARD[previous["plan"]]
        + _REGION_HAZARD[previous["region"]]
        + 2.0 * np.log(previous["fee"] / _PLAN_FEE[previous["plan"]])
        + 0.3 * strength
    )
    return 1.0 / (1.0 + np.exp(-logit))


def _step(config: ChurnConfig, previous: _Day | None, ordinal: int) -> _Day:
    """The next day of the simulation: turnover, latent engagement, then today's observations."""
    n, seed = config.customers, config.seed
    joiners = _joiners(seed, ordinal, n)

    def daily(tag: int) -> np.random.Generator:
        return _rng(seed, _STREAM_DAILY, ordinal, tag)

    if previous is None:  # first day of the burn-in: an established customer base
        new = np.ones(n, dtype=bool)
        generation = np.zeros(n, dtype=np.int64)
        tenure = np.floor(daily(0).exponential(400.0, n)).astype(np.int64)
        disengaged = np.zeros(n, dtype=bool)
        attrs = joiners
    else:
        new = previous["churned"].astype(bool)
        generation = previous["generation"] + new
        tenure = np.where(new, 0, previous["tenure"] + 1)
        disengaged = previous["disengaged"] & ~new
        attrs = {k: np.where(new, v, previous[k]) for k, v in joiners.items()}
    if generation.max(initial=0) > 999:
        raise ValueError("a slot ran out of customer ids (over 999 cancellations); shorten days")

    # Draws are shaped (slot, quantity): slot i always gets the same values, whatever n is.
    u_enter, u_leave, u_missing, u_churn = daily(1).random((n, 4)).T
    z_wander, z_fall = daily(2).standard_normal((n, 2)).T
    enter = u_enter < _DISENGAGE_PROBABILITY * (1.0 + 2.0 * (tenure < 60))
    disengaged = np.where(disengaged, u_leave >= _RECOVER_PROBABILITY, enter & ~new)
    log_engagement = attrs["log_engagement"]
    wander = 0.85 * log_engagement + 0.12 * z_wander
    falling = np.maximum(log_engagement - 0.3 + 0.05 * z_fall, -4.0)
    attrs["log_engagement"] = np.where(new, log_engagement, np.where(disengaged, falling, wander))

    shifted = config.shift_from is not None and ordinal >= config.shift_from.toordinal()
    strength = config.shift_strength if shifted else 0.0
    weekday = date.fromordinal(ordinal).weekday()
    activity = attrs["activity"] * np.exp(attrs["log_engagement"]) * _WEEKDAY_ACTIVITY[weekday]
    ticket_rate = attrs["ticket_rate"] * (1.0 + 4.0 * disengaged)
    rates = np.column_stack((activity / (1.0 + strength), ticket_rate, attrs["payment_risk"]))
    sessions, tickets, payments = daily(3).poisson(rates).T
    minutes = np.round(sessions * attrs["minutes_per_session"] * daily(4).gamma(4.0, 0.25, n), 2)
    list_price = _PLAN_FEE[attrs["plan"]] * (1.0 + 0.5 * strength)
    fee = np.round(list_price * np.where(attrs["discount"], _DISCOUNT_FACTOR, 1.0), 2)
    churned = np.zeros(n, dtype=np.int64)
    if previous is not None:
        churned = (u_churn < _hazard(previous, strength)).astype(np.int64)
    return {
        **attrs,
        "generation": generation,
        "disengaged": disengaged,
        "tenure": tenure,
        "sessions": sessions.astype(np.int64),
        "minutes": minutes,
        "tickets": tickets.astype(np.int64),
        "payment_failures": payments.astype(np.int64),
        "payment_missing": u_missing < _PAYMENT_MISSING,
        "fee": fee,
        "churned": churned,
    }


@lru_cache(maxsize=8)
def _block(key: ChurnConfig, block: int) -> tuple[_Day, ...]:
    """`_BLOCK_DAYS` consecutive days; a block starts from the last day of the one before."""
    previous = _block_end(key, block - 1) if block > 0 else None
    origin = key.start.toordinal() - _BURN_IN_DAYS + block * _BLOCK_DAYS
    days = []
    for i in range(_BLOCK_DAYS):
        previous = _step(key, previous, origin + i)
        days.append(previous)
    return tuple(days)


@lru_cache(maxsize=1024)
def _block_end(key: ChurnConfig, block: int) -> _Day:
    """Checkpoints are small, so decades of them stay cached while few whole blocks do."""
    return _block(key, block)[-1]


def _simulated_day(config: ChurnConfig, day: date) -> _Day:
    # Only what changes the simulation keys the cache: `days` and corruption do not.
    key = replace(config, days=0, corrupt_fraction=0.0)
    block, index = divmod(day.toordinal() - config.start.toordinal() + _BURN_IN_DAYS, _BLOCK_DAYS)
    for earlier in range(block):  # in order, so no recursion goes deeper than one block
        _block_end(key, earlier)
    return _block(key, block)[index]


def generate_day(config: ChurnConfig, day: date) -> pd.DataFrame:
    """The rows of one day's landing file, one per active customer, sorted by customer_id.

    After `shift_from` fees rise by `50 % * shift_strength`, sessions fall by a factor
    `1 + shift_strength` and churn rises through the fee, the fewer sessions and directly.
    """
    if day < config.start:
        raise ValueError(f"day {day} is before the simulation start {config.start}")
    state = _simulated_day(config, day)
    slots = np.arange(1, config.customers + 1)
    order = np.lexsort((slots, state["generation"]))  # ids sort by generation, then slot
    payments = pd.array(state["payment_failures"], dtype="Int64")
    payments[state["payment_missing"]] = pd.NA
    ids = [
        f"C{g:03d}{s:03d}" for g, s in zip(state["generation"][order], slots[order], strict=True)
    ]
    frame = pd.DataFrame(
        {
            "date": np.full(config.customers, day.isoformat()),
            "customer_id": ids,
            "plan": np.array(PLANS)[state["plan"][order]],
            "region": np.array(REGIONS)[state["region"][order]],
            "tenure_days": state["tenure"][order],
            "sessions": state["sessions"][order],
            "minutes_used": state["minutes"][order],
            "support_tickets": state["tickets"][order],
            "payment_failures": payments[order],
            "monthly_fee": state["fee"][order],
            "churned": state["churned"][order],
        },
        columns=list(COLUMNS),
    )
    if config.corrupt_fraction > 0:
        rng = _rng(config.seed, _STREAM_CORRUPTION, day.toordinal())
        frame = corrupt_rows(frame, config.corrupt_fraction, rng)
    return frame


def corrupt_rows(frame: pd.DataFrame, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """A copy with `round(fraction * len(frame))` bad rows, cycling through `CORRUPTION_KINDS`.

    Data contracts need every failure mode present to be tested. Duplicates are appended copies of
    rows left otherwise intact, so they are exact duplicates and not also bad in some other way.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out = frame.copy()
    n_bad = min(round(fraction * len(frame)), len(frame))
    if n_bad == 0:
        return out
    kinds = np.array(CORRUPTION_KINDS)[np.arange(n_bad) % len(CORRUPTION_KINDS)]
    rows = out.index[rng.choice(len(frame), size=n_bad, replace=False)]

    negative = rows[kinds == "negative_sessions"]
    out.loc[negative, "sessions"] = -out.loc[negative, "sessions"].abs() - 1

    missing = rows[kinds == "missing_value"]
    if len(missing):
        out["sessions"] = out["sessions"].astype("Int64")  # keeps ints as ints in the CSV
        in_sessions = rng.random(len(missing)) < 0.5
        out.loc[missing[in_sessions], "sessions"] = pd.NA
        out.loc[missing[~in_sessions], "monthly_fee"] = np.nan

    out.loc[rows[kinds == "unknown_plan"], "plan"] = UNKNOWN_PLAN
    out.loc[rows[kinds == "bad_date"], "date"] = BAD_DATE
    return pd.concat([out, out.loc[rows[kinds == "duplicate"]]], ignore_index=True)


def write_landing_files(
    config: ChurnConfig,
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
