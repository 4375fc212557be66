"""The two steps that grew worst from 1,000 to 10,000 series, before and after, in one process.

    .venv/bin/python bench/scale_hotspots.py [--series 10000] [--days 730] [--entities 1000000]

1. Calendar features of a 730-day feature range (`core.features.calendar_features`): formatting
   every row's date (`strftime`, 7.3M rows at 10,000 series) against once per distinct day.
2. Rolling means of the day × series matrix (`core.features.rolling_mean`): pandas' `rolling`
   column by column against shifted adds over the whole matrix, windows 7 and 28.
3. Encoding each entity's latest row for the online store (`resources.feature_store`): `to_dict`
   + `json.dumps` row by row against column-wise values + orjson in chunks.

Both sides run on the same frame in the same process and must give the same result; the ratio is
what the scale runs gain. Whole-pipeline figures are in `pipeline.py` and `serving.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def calendar_row_by_row(feature_day: pd.Series, spec) -> pd.DataFrame:
    """`calendar_features` as it was: every row's date formatted."""
    from ml_platform.core.features import _calendar_of

    return _calendar_of(pd.to_datetime(feature_day), spec)


def latest_rows_row_by_row(spec, features: pd.DataFrame) -> list[tuple[str, str, str]]:
    """`latest_rows` as it was: sort, dedupe, then `to_dict` and `json.dumps` per row."""
    from ml_platform.resources.feature_store import entity_id

    def plain(value):
        if isinstance(value, pd.Timestamp):
            return value.date().isoformat()
        if pd.isna(value):
            return None
        return value.item() if hasattr(value, "item") else value

    latest = features.sort_values(spec.timestamp).drop_duplicates(spec.entity_keys, keep="last")
    return [
        (
            entity_id(spec, row),
            pd.Timestamp(row[spec.timestamp]).date().isoformat(),
            json.dumps({k: plain(v) for k, v in row.items()}),
        )
        for row in latest.to_dict("records")
    ]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    from ml_platform.core.features import calendar_features, rolling_mean
    from ml_platform.resources.feature_store import latest_rows
    from ml_platform.specs import SPEC_DIR, load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--entities", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    spec = load_spec(SPEC_DIR / "sales_forecast.yaml")

    days = pd.date_range("2024-01-01", periods=args.days, freq="D")
    feature_day = pd.Series(np.repeat(days.to_numpy(), args.series))
    before, old = timed(calendar_row_by_row, feature_day, spec)
    after, new = timed(calendar_features, feature_day, spec)
    pd.testing.assert_frame_equal(old, new)
    print(f"calendar features, {len(feature_day):,} rows ({args.series:,} series × {args.days} d)")
    print(f"  row by row {before:7.2f}s   per distinct day {after:7.2f}s   {before / after:6.1f}×")

    rng = np.random.default_rng(0)
    wide = pd.DataFrame(rng.gamma(2.0, 50.0, size=(args.days + 28, args.series)))
    wide = wide.mask(rng.random(wide.shape) < 0.05)
    pandas_s = numpy_s = 0.0
    for window in (7, 28):
        t_pandas, old = timed(lambda w=window: wide.rolling(w, min_periods=w // 2).mean())
        t_numpy, new = timed(rolling_mean, wide, window, window // 2)
        pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=1e-12, atol=1e-9)
        pandas_s, numpy_s = pandas_s + t_pandas, numpy_s + t_numpy
    print(f"rolling means 7 and 28, {wide.shape[0]} days × {args.series:,} series")
    print(f"  pandas     {pandas_s:7.2f}s   whole matrix     {numpy_s:7.2f}s   "
          f"{pandas_s / numpy_s:6.1f}×")  # fmt: skip

    n = args.entities
    frame = pd.DataFrame(
        {
            "store_id": [f"S{i // 100:04d}" for i in range(n)],
            "product_id": [f"P{i % 100:02d}" for i in range(n)],
            spec.timestamp: pd.Timestamp("2026-01-01"),
            spec.target: rng.integers(0, 100, n),
        }
    )
    for column in spec.feature_columns:
        if column not in frame:
            frame[column] = np.where(rng.random(n) < 0.02, np.nan, rng.normal(size=n))
    before, old = timed(latest_rows_row_by_row, spec, frame)
    after, new = timed(latest_rows, spec, frame)
    parsed = [{e: (d, json.loads(t)) for e, d, t in rows} for rows in (old, new)]
    same = parsed[0] == parsed[1]
    print(f"online rows, {n:,} entities × {frame.shape[1]} columns (same rows: {same})")
    print(f"  row by row {before:7.2f}s   column-wise  {after:7.2f}s   {before / after:6.1f}×")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
