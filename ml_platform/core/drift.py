"""Data and concept drift between a reference window and a current window.

Decisions rest on effect sizes (PSI, normalised Wasserstein, Jensen-Shannon distance and the change
in missing share) because p-values shrink with sample size: at a million rows a KS test flags
differences nobody cares about. KS and chi-square p-values are still reported, BH-adjusted, for
readers who want them.

Numeric columns are summarised by one pass each into a fine histogram over a shared grid (plus
exact tail sums), which gives PSI, Wasserstein and KS without sorting: a million rows by twenty
columns takes well under a second and needs a few column-sized temporaries, never a frame copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import special
from scipy.spatial import distance as scipy_distance

from ml_platform.core.drift_numeric import (  # noqa: F401 (psi, PSI_EPSILON: the one PSI)
    PSI_EPSILON,
    NumericReference,
    _finite,
    empty_stats,
    numeric_stats,
    psi,
)

NUMERIC = "numeric"
CATEGORICAL = "categorical"
_KINDS = (NUMERIC, CATEGORICAL)

_MIN_CATEGORY_SHARE = 0.01  # rarer reference categories (and unseen ones) share an "other" bucket
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?"


class DriftInputError(ValueError):
    """Inputs that cannot be compared; the message says which window or column is at fault."""


@dataclass(frozen=True)
class DriftThresholds:
    """Effect-size limits at or above which a column counts as drifted."""

    psi: float = 0.2
    wasserstein: float = 0.1  # Wasserstein distance / reference std
    js: float = 0.1  # Jensen-Shannon distance (base 2, in [0, 1])
    missing_share: float = 0.1  # absolute change in the share of missing values
    drift_share: float = 0.5  # dataset drifted when the share of drifted columns >= this
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("psi", "wasserstein", "js", "missing_share"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise DriftInputError(f"threshold {name} must be a positive number, got {value}")
        if not 0 < self.drift_share <= 1:
            raise DriftInputError(f"drift_share must be in (0, 1], got {self.drift_share}")
        if self.bins < 2:
            raise DriftInputError(f"bins must be at least 2, got {self.bins}")


@dataclass(frozen=True)
class ColumnDrift:
    """One column's statistics and decision; None marks a statistic that is undefined."""

    column: str
    kind: str
    psi: float | None
    distance: float | None
    distance_name: str
    p_value: float | None
    p_value_adjusted: float | None
    missing_share_reference: float
    missing_share_current: float
    drifted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DriftReport:
    """Per-column results and the dataset-level decision."""

    columns: list[ColumnDrift]
    drift_share: float
    dataset_drift: bool
    n_reference: int
    n_current: int
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    @property
    def max_psi(self) -> float:
        return max((c.psi for c in self.columns if c.psi is not None), default=0.0)

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: no NaN or inf anywhere."""
        return {
            "dataset_drift": self.dataset_drift,
            "drift_share": _finite_or_none(self.drift_share),
            "n_drifted": len(self.drifted_columns),
            "n_columns": len(self.columns),
            "max_psi": _finite_or_none(self.max_psi),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "thresholds": asdict(self.thresholds),
            "columns": [c.to_dict() for c in self.columns],
        }

    def to_markdown(self) -> str:
        """A summary line and one table row per feature, readable in the Dagster UI."""
        t = self.thresholds
        verdict = "yes" if self.dataset_drift else "no"
        lines = [
            f"**Dataset drift: {verdict}**: {len(self.drifted_columns)} of {len(self.columns)} "
            f"columns drifted (share {self.drift_share:.2f}, threshold {t.drift_share:g}); "
            f"reference {self.n_reference:,} rows, current {self.n_current:,} rows.",
            "",
            "| column | kind | psi | distance | threshold | missing ref → cur | p (BH) "
            "| drifted | reason |",
            "|---|---|---:|---:|---|---|---:|---|---|",
        ]
        for c in self.columns:
            limit = t.wasserstein if c.kind == NUMERIC else t.js
            lines.append(
                f"| {_md(c.column)} | {c.kind} | {format_stat(c.psi)} | {format_stat(c.distance)} "
                f"| psi {t.psi:g}, {c.distance_name} {limit:g} "
                f"| {c.missing_share_reference:.1%} → {c.missing_share_current:.1%} "
                f"| {format_stat(c.p_value_adjusted)} | {'**yes**' if c.drifted else 'no'} "
                f"| {_md(c.reason)} |"
            )
        return "\n".join(lines)


class ColumnSource(Protocol):
    """One window, read a column at a time: what `compute_drift` needs and no more."""

    n_rows: int
    names: list[str]

    def infer_kinds(self) -> dict[str, str]: ...

    def all_missing(self, name: str) -> bool: ...

    def numeric(self, name: str, window: str) -> np.ndarray: ...

    def counts(self, name: str) -> pd.Series: ...


class FrameSource:
    """A DataFrame as a `ColumnSource`."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.n_rows = len(frame)
        self.names = list(frame.columns)

    def infer_kinds(self) -> dict[str, str]:
        return infer_column_kinds(self.frame)

    def all_missing(self, name: str) -> bool:
        return bool(self.frame[name].isna().all())

    def numeric(self, name: str, window: str) -> np.ndarray:
        return _as_float(self.frame[name], window)

    def counts(self, name: str) -> pd.Series:
        return self.frame[name].value_counts(dropna=True, sort=True)


def as_source(window: pd.DataFrame | ColumnSource) -> ColumnSource:
    return FrameSource(window) if isinstance(window, pd.DataFrame) else window


def infer_column_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """Numeric vs categorical by dtype; date and time columns are left out.

    Timestamps differ between windows by construction, so comparing them would always "drift".
    Low-cardinality integers stay numeric: their order carries meaning (counts, flags, weekdays).
    """
    kinds: dict[str, str] = {}
    types = pd.api.types
    for name, dtype in frame.dtypes.items():
        if types.is_bool_dtype(dtype):
            kinds[name] = CATEGORICAL
        elif types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype):
            kinds[name] = NUMERIC
        elif not (
            _is_temporal(dtype) or types.is_complex_dtype(dtype) or _looks_like_dates(frame[name])
        ):
            kinds[name] = CATEGORICAL
    return kinds


def compute_drift(
    reference: pd.DataFrame | ColumnSource,
    current: pd.DataFrame | ColumnSource,
    *,
    columns: dict[str, str] | None = None,
    thresholds: DriftThresholds = DriftThresholds(),  # frozen, so sharing is safe
) -> DriftReport:
    """Compare every column of `current` with `reference` and decide on effect sizes.

    Either window may be a DataFrame or a `ColumnSource` (one column at a time, e.g. a parquet
    file), so a caller never has to hold both windows whole when the statistics need one column.
    """
    ref, cur = as_source(reference), as_source(current)
    for window, source in (("reference", ref), ("current", cur)):
        if source.n_rows == 0:
            raise DriftInputError(f"the {window} window is empty (0 rows); nothing to compare")
    kinds = _resolve_kinds(ref, cur, columns)
    partial = [_column_stats(ref, cur, c, kind, thresholds) for c, kind in kinds.items()]
    return report_from_stats(kinds, partial, ref.n_rows, cur.n_rows, thresholds)


def report_from_stats(
    kinds: dict[str, str],
    partial: list[dict],
    n_reference: int,
    n_current: int,
    thresholds: DriftThresholds,
) -> DriftReport:
    """Adjust the p-values across columns and decide each column and the dataset."""
    adjusted = _adjust_defined([s["p_value"] for s in partial])
    results = [
        _decide(str(name), kind, stats_, p_adj, thresholds)
        for (name, kind), stats_, p_adj in zip(kinds.items(), partial, adjusted, strict=True)
    ]
    share = sum(r.drifted for r in results) / len(results)
    return DriftReport(
        columns=results,
        drift_share=share,
        dataset_drift=share >= thresholds.drift_share,
        n_reference=n_reference,
        n_current=n_current,
        thresholds=thresholds,
    )


def concept_drift(errors_current: np.ndarray, holdout_mae: float, tolerance: float) -> dict:
    """Champion MAE on newly labelled rows against its holdout MAE; drift when ratio > tolerance."""
    if not (math.isfinite(holdout_mae) and holdout_mae >= 0):
        raise DriftInputError(f"holdout_mae must be a finite number >= 0, got {holdout_mae}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise DriftInputError(f"tolerance must be a positive number, got {tolerance}")
    errors = np.abs(np.asarray(errors_current, dtype=np.float64).ravel())
    errors = errors[np.isfinite(errors)]
    result: dict[str, Any] = {"mae_current": None, "mae_holdout": float(holdout_mae)}
    result.update(ratio=None, drifted=False, n=int(errors.size))
    if errors.size == 0:
        return result
    mae = float(errors.mean())
    ratio = mae / holdout_mae if holdout_mae > 0 else None  # a perfect holdout has no ratio
    drifted = ratio > tolerance if ratio is not None else mae > 0
    result.update(mae_current=mae, ratio=ratio, drifted=bool(drifted))
    return result


# --- column statistics --------------------------------------------------------------------------


def _column_stats(
    ref: ColumnSource, cur: ColumnSource, name: str, kind: str, t: DriftThresholds
) -> dict:
    if kind == NUMERIC:
        return numeric_stats(
            NumericReference.of(ref.numeric(name, "reference")),
            cur.numeric(name, "current"),
            t.bins,
        )
    return categorical_stats(ref.counts(name), ref.n_rows, cur.counts(name), cur.n_rows)


def categorical_stats(
    counts_ref: pd.Series, len_ref: int, counts_cur: pd.Series, len_cur: int
) -> dict:
    """PSI, Jensen-Shannon distance and chi-square p-value from value counts (missing left out).

    `counts_ref` is sorted by count, largest first; `len_*` count every row, missing included.
    """
    counts_ref, counts_cur = counts_ref[counts_ref > 0], counts_cur[counts_cur > 0]
    n_ref, n_cur = int(counts_ref.sum()), int(counts_cur.sum())
    out = empty_stats(1 - n_ref / len_ref, 1 - n_cur / len_cur)
    if out["note"]:
        return out
    if len(counts_ref) == 1 and len(counts_cur) == 1 and counts_ref.index[0] == counts_cur.index[0]:
        out.update(psi=0.0, distance=0.0, p_value=None, note="constant in both windows")
        return out
    keep = counts_ref.index[counts_ref.to_numpy() >= _MIN_CATEGORY_SHARE * n_ref]
    ref_kept = counts_ref.reindex(keep).to_numpy(dtype=np.int64)
    cur_kept = counts_cur.reindex(keep, fill_value=0).to_numpy(dtype=np.int64)
    ref_bins = np.append(ref_kept, n_ref - ref_kept.sum())  # last bucket: rare and unseen values
    cur_bins = np.append(cur_kept, n_cur - cur_kept.sum())
    table = np.vstack([ref_bins, cur_bins])
    table = table[:, table.sum(axis=0) > 0]
    p_value = None
    if table.shape[1] > 1:
        p_value = _chi_square_p_value(table)
    out.update(psi=psi(ref_bins, cur_bins), distance=_js_distance(ref_bins, cur_bins))
    out["p_value"] = p_value
    if len(counts_ref) == 1:
        out["note"] = f"constant in reference ({counts_ref.index[0]!r})"
    elif keep.empty:
        out["note"] = "no category holds 1% of the reference; compared as rare vs unseen"
    return out


def _decide(name: str, kind: str, s: dict, p_adj: float | None, t: DriftThresholds) -> ColumnDrift:
    distance_name = "wasserstein_norm" if kind == NUMERIC else "js_distance"
    limit = t.wasserstein if kind == NUMERIC else t.js
    psi, distance = _finite_or_none(s["psi"]), _finite_or_none(s["distance"])
    reasons = []
    if psi is not None and psi >= t.psi:
        reasons.append(f"psi {psi:.3g} >= {t.psi:g}")
    if distance is not None and distance >= limit:
        reasons.append(f"{distance_name} {distance:.3g} >= {limit:g}")
    change = abs(s["missing_cur"] - s["missing_ref"])
    if change >= t.missing_share:
        reasons.append(f"missing share change {change:.3g} >= {t.missing_share:g}")
    reason = "; ".join([r for r in [s["note"], *reasons] if r]) or "stable"
    return ColumnDrift(
        column=name,
        kind=kind,
        psi=psi,
        distance=distance,
        distance_name=distance_name,
        p_value=_finite_or_none(s["p_value"]),
        p_value_adjusted=_finite_or_none(p_adj),
        missing_share_reference=s["missing_ref"],
        missing_share_current=s["missing_cur"],
        drifted=bool(reasons),
        reason=reason,
    )


def _chi_square_p_value(table: np.ndarray) -> float:
    """Chi-square test of homogeneity for a 2 x k table of counts (no zero columns)."""
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return float(special.chdtrc(table.shape[1] - 1, statistic))


def _as_float(series: pd.Series, window: str) -> np.ndarray:
    dtype = series.dtype
    if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
        try:
            series = pd.to_numeric(series, errors="raise")
        except (ValueError, TypeError) as exc:
            raise DriftInputError(
                f"column {series.name!r} is compared as numeric but the {window} window holds "
                f"non-numeric values ({exc})"
            ) from exc
    if isinstance(series.dtype, np.dtype):
        return series.to_numpy(dtype=np.float64, copy=False)
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def finite_floats(series: pd.Series, window: str) -> np.ndarray:
    """The column's finite values as float64 (for plots); raises DriftInputError if not numeric."""
    return _finite(_as_float(series, window))[0]


# --- shared helpers -----------------------------------------------------------------------------


def _js_distance(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Jensen-Shannon distance in bits (so in [0, 1]); scipy normalises the counts to shares.

    For nearly equal shares the divergence can round to a tiny negative number, whose square root
    scipy returns as NaN; the distance there is zero.
    """
    with np.errstate(invalid="ignore"):
        value = float(scipy_distance.jensenshannon(ref_counts, cur_counts, base=2))
    return value if math.isfinite(value) else 0.0


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, as `scipy.stats.false_discovery_control(p, "bh")`.

    Written out (a test holds it to scipy's) because importing `scipy.stats` costs more than the
    whole comparison of a million rows: it would be most of `ml-platform drift`'s run time.
    """
    ordered = np.sort(np.asarray(p_values, dtype=np.float64))
    order = np.argsort(np.asarray(p_values, dtype=np.float64), kind="stable")
    m = ordered.size
    scaled = ordered * (m / np.arange(1, m + 1))
    adjusted = np.empty(m)
    adjusted[order] = np.clip(np.minimum.accumulate(scaled[::-1])[::-1], 0, 1)
    return adjusted


def _adjust_defined(p_values: list[float | None]) -> list[float | None]:
    defined = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    adjusted: list[float | None] = [None] * len(p_values)
    bh = benjamini_hochberg(np.array([p_values[i] for i in defined], dtype=np.float64))
    for i, value in zip(defined, bh, strict=True):
        adjusted[i] = float(value)
    return adjusted


def _resolve_kinds(
    reference: ColumnSource, current: ColumnSource, columns: dict[str, str] | None
) -> dict[str, str]:
    if columns is not None:
        unknown = {c: k for c, k in columns.items() if k not in _KINDS}
        if unknown:
            raise DriftInputError(f"unknown column kinds {unknown}; use one of {list(_KINDS)}")
        missing = _missing_columns(list(columns), reference, current)
        if missing:
            raise DriftInputError(f"columns not found: {', '.join(missing)}")
        kinds = dict(columns)
    else:
        only_ref = [c for c in reference.names if c not in current.names]
        only_cur = [c for c in current.names if c not in reference.names]
        if only_ref or only_cur:
            raise DriftInputError(
                f"the windows have different columns: only in reference {only_ref}, only in "
                f"current {only_cur}; pass the columns to compare explicitly"
            )
        inferred_ref, inferred_cur = reference.infer_kinds(), current.infer_kinds()
        kinds = {}
        for c in reference.names:
            kind = inferred_ref.get(c)
            if kind != inferred_cur.get(c) and reference.all_missing(c):
                kind = inferred_cur.get(c)  # an all-missing column's dtype says nothing
            if kind is not None:
                kinds[c] = kind
    if not kinds:
        raise DriftInputError("no numeric or categorical columns to compare")
    return kinds


def _missing_columns(names: list[str], reference: ColumnSource, current: ColumnSource) -> list:
    missing = []
    for name in names:
        windows = [
            w for w, f in (("reference", reference), ("current", current)) if name not in f.names
        ]
        if windows:
            missing.append(f"{name!r} (missing from {' and '.join(windows)})")
    return missing


def _is_temporal(dtype: Any) -> bool:
    types = pd.api.types
    return (
        types.is_datetime64_any_dtype(dtype)
        or types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, pd.PeriodDtype)
    )


def _looks_like_dates(series: pd.Series) -> bool:
    head = series.iloc[:200].dropna()
    if head.empty or not all(isinstance(v, str) for v in head):
        return False
    return bool(head.str.match(_ISO_DATE).all())


def severity(c: ColumnDrift, t: DriftThresholds) -> float:
    """How far past its nearest threshold a column is (1.0 = at the threshold), for ranking."""
    limit = t.wasserstein if c.kind == NUMERIC else t.js
    missing = abs(c.missing_share_current - c.missing_share_reference) / t.missing_share
    return max((c.psi or 0.0) / t.psi, (c.distance or 0.0) / limit, missing)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def format_stat(value: float | None) -> str:
    """A statistic for people: three significant digits, tiny values in e-notation, "-" if none."""
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
