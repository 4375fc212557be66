"""Numeric columns: one pass each into a fine histogram over a shared grid.

The grid spans the bulk (1st to 99th percentile) of both windows; the tails beyond it are summed
exactly. That gives PSI, Wasserstein and KS without sorting either window. A reference that many
windows share (a backfill) is sorted once instead, so its histogram on each window's grid is a
binary search rather than a pass over its rows, with the same counts cell for cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

PSI_EPSILON = 1e-4  # floor for bin shares, so empty bins (unseen/vanished values) stay finite
_GRID_CELLS = 4096  # fine cells between the bulk quantiles; Wasserstein error is about range/4096
_RANGE_SAMPLE = 20_000  # a random sample places the grid; the tails beyond it are summed exactly
_RANGE_QUANTILES = (0.01, 0.99)  # outliers and sentinels fall in the tails, not the grid
_SORT_FROM = 200_000  # a shared reference this large is sorted once (measured crossover ~100k)


@dataclass
class NumericReference:
    """The reference side of a numeric column, computed once; `sort()` makes it reusable.

    A backfill compares one reference with hundreds of windows: with the values sorted, the
    reference's histogram on each window's grid costs a binary search, not a pass over the rows.
    """

    values: np.ndarray  # finite values only
    missing: float
    std: float
    bulk: tuple[float, float]
    ordered: np.ndarray | None = None

    @classmethod
    def of(cls, raw: np.ndarray) -> NumericReference:
        values, missing = _finite(raw)
        std = float(np.std(values)) if values.size else math.nan
        bulk = _bulk_range(values) if values.size else (math.nan, math.nan)
        return cls(values, missing, std, bulk)

    def sort(self) -> NumericReference:
        """Sort a large reference for reuse; below `_SORT_FROM` values a pass is cheaper than the
        binary searches (the counts are the same either way)."""
        if self.values.size >= _SORT_FROM:
            self.ordered = np.sort(self.values)
        return self

    def histogram(self, lo: float, scale: float) -> tuple[np.ndarray, float, float]:
        if self.ordered is None:
            return _cell_histogram(self.values, lo, scale)
        return _sorted_cell_histogram(self.ordered, lo, scale)


def numeric_stats(reference: NumericReference, cur: np.ndarray, bins: int) -> dict:
    """PSI, normalised Wasserstein and the KS p-value of one numeric column (raw `cur`)."""
    ref = reference.values
    cur, missing_cur = _finite(cur)
    out = empty_stats(reference.missing, missing_cur)
    if out["note"]:
        return out
    ref_min, ref_max = (
        (float(reference.ordered[0]), float(reference.ordered[-1]))
        if reference.ordered is not None
        else (float(ref.min()), float(ref.max()))
    )
    if ref_min == ref_max:
        return _constant_reference(ref_min, ref.size, cur, out)
    lo_r, hi_r = reference.bulk
    lo_c, hi_c = _bulk_range(cur)
    lo, hi = min(lo_r, lo_c), max(hi_r, hi_c)
    if not hi > lo:  # the bulk is a single value; keep a tiny grid, tails are summed exactly
        hi = lo + max(abs(lo), 1.0) * 1e-9
    scale = _GRID_CELLS / (hi - lo)
    counts_r, below_r, above_r = reference.histogram(lo, scale)
    counts_c, below_c, above_c = _cell_histogram(cur, lo, scale)
    cdf_r = np.cumsum(counts_r) / ref.size
    cdf_c = np.cumsum(counts_c) / cur.size
    width = 1.0 / scale
    tails = abs(below_r / ref.size - below_c / cur.size) + abs(
        above_r / ref.size - above_c / cur.size
    )
    bulk = _integral_abs_linear(cdf_r[: _GRID_CELLS + 1] - cdf_c[: _GRID_CELLS + 1])
    wasserstein = width * (bulk + tails)
    ks = float(np.max(np.abs(cdf_r - cdf_c)))
    ref_bins, cur_bins = _quantile_bins(counts_r, counts_c, bins)
    out.update(
        psi=psi(ref_bins, cur_bins),
        distance=wasserstein / reference.std,
        p_value=_ks_p_value(ks, ref.size, cur.size),
    )
    return out


def _constant_reference(value: float, n_ref: int, cur: np.ndarray, out: dict) -> dict:
    below = int(np.count_nonzero(cur < value))
    above = int(np.count_nonzero(cur > value))
    if below == above == 0:
        out.update(psi=0.0, distance=0.0, p_value=None, note="constant in both windows")
        return out
    differs = (below + above) / cur.size
    ref_bins = np.array([0, 1, 0])
    cur_bins = np.array([below, cur.size - below - above, above])
    out.update(
        psi=psi(ref_bins, cur_bins),
        distance=None,  # normalising by a zero reference std is undefined
        p_value=_ks_p_value(max(below, above) / cur.size, n_ref, cur.size),
        note=f"constant in reference ({value:g}); {differs:.1%} of current differs",
    )
    return out


def empty_stats(missing_ref: float, missing_cur: float) -> dict:
    note = ""
    if missing_ref == 1 and missing_cur == 1:
        note = "all values missing in both windows"
    elif missing_ref == 1 or missing_cur == 1:
        note = f"all values missing in the {'reference' if missing_ref == 1 else 'current'} window"
    out = {"psi": None, "distance": None, "p_value": None, "note": note}
    out.update(missing_ref=float(missing_ref), missing_cur=float(missing_cur))
    return out


def psi(
    reference_counts: np.ndarray, current_counts: np.ndarray, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index of two histograms over the same bins.

    Shares are floored at epsilon, so a bin empty on one side (unseen or vanished values) stays
    finite. The drift report and the canary's prediction check both use this one definition.
    """
    p = np.maximum(reference_counts / reference_counts.sum(), epsilon)
    q = np.maximum(current_counts / current_counts.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


# --- numeric helpers ----------------------------------------------------------------------------


def _bulk_range(values: np.ndarray) -> tuple[float, float]:
    """Grid ends from a seeded random sample: cheap, and immune to periodic row order."""
    sample = values
    if values.size > _RANGE_SAMPLE:
        sample = values[np.random.default_rng(0).integers(0, values.size, _RANGE_SAMPLE)]
    lo, hi = np.quantile(sample, _RANGE_QUANTILES)
    return float(lo), float(hi)


def _cell_histogram(values: np.ndarray, lo: float, scale: float) -> tuple[np.ndarray, float, float]:
    """Counts in cells [below grid, grid cells..., at/above grid end] and the tail excesses.

    The excesses (summed distance beyond each grid end, in cell widths) make the Wasserstein
    integral over the tails exact instead of clipped.
    """
    cells = _GRID_CELLS
    with np.errstate(over="ignore", invalid="ignore"):
        y = values - lo
        y *= scale
        below = -float(np.sum(y, where=y < 0))
        above_mask = y > cells
        above = float(np.sum(y, where=above_mask)) - cells * int(np.count_nonzero(above_mask))
    np.clip(y, -1, cells, out=y)
    y += 1
    return np.bincount(y.astype(np.intp), minlength=cells + 2), below, above


def _sorted_cell_histogram(
    ordered: np.ndarray, lo: float, scale: float
) -> tuple[np.ndarray, float, float]:
    """`_cell_histogram` of sorted values, equal cell for cell, without a pass over them.

    A value's cell is a non-decreasing function of the value, so each cell starts where the
    sorted values cross its lower edge. `searchsorted` finds that to within rounding; positions
    are then moved, a run of equal values at a time, until `_cell_histogram`'s own arithmetic
    agrees. Only the tails (a few percent of the values) are touched to sum their excesses.
    """
    cells, n = _GRID_CELLS, ordered.size
    wanted = np.arange(1, cells + 2)  # the first position of cells 1 .. cells + 1

    def cell(values: np.ndarray) -> np.ndarray:
        y = (values - lo) * scale
        np.clip(y, -1, cells, out=y)
        y += 1
        return y.astype(np.intp)

    with np.errstate(over="ignore", invalid="ignore"):
        first = np.searchsorted(ordered, lo + (wanted - 1) / scale, side="left")
        for _ in range(cells):
            before = ordered[np.maximum(first - 1, 0)]
            late = (first > 0) & (cell(before) >= wanted)  # the value before already reaches it
            at = ordered[np.minimum(first, n - 1)]
            early = (first < n) & (cell(at) < wanted) & ~late  # this value falls short of it
            if not (late.any() or early.any()):
                break
            first = np.where(late, np.searchsorted(ordered, before, side="left"), first)
            first = np.where(early, np.searchsorted(ordered, at, side="right"), first)
        counts = np.diff(np.concatenate(([0], first, [n])))
        below_end = int(np.searchsorted(ordered, lo, side="left"))
        below = -float(np.sum((ordered[:below_end] - lo) * scale))
        tail = ordered[int(first[-1]) :]  # values in the last cell: y >= cells
        y_tail = (tail - lo) * scale
        over = y_tail > cells
        above = float(np.sum(y_tail[over])) - cells * int(np.count_nonzero(over))
    return counts.astype(np.int64), below, above


def _integral_abs_linear(diff: np.ndarray) -> float:
    """Integral of |F - G| over unit cells, F - G linear inside each cell (exact at the ends)."""
    d0, d1 = diff[:-1], diff[1:]
    total = np.abs(d0) + np.abs(d1)
    crossing = d0 * d1 < 0
    crossed = np.divide(d0 * d0 + d1 * d1, 2 * total, out=np.zeros_like(total), where=crossing)
    return float(np.sum(np.where(crossing, crossed, total / 2)))


def _quantile_bins(counts_r: np.ndarray, counts_c: np.ndarray, bins: int) -> tuple:
    """Merge fine cells into reference-quantile bins; tied quantiles collapse into one bin."""
    cum = np.cumsum(counts_r)
    targets = cum[-1] * np.arange(1, bins) / bins
    cuts = np.unique(np.searchsorted(cum, targets, side="left"))
    cuts = cuts[cuts < counts_r.size - 1]
    starts = np.concatenate(([0], cuts + 1))
    return np.add.reduceat(counts_r, starts), np.add.reduceat(counts_c, starts)


def _ks_p_value(statistic: float, n: int, m: int) -> float:
    """Two-sample KS p-value: Kolmogorov limit with Stephens' small-sample correction."""
    root = math.sqrt(n * m / (n + m))
    return float(special.kolmogorov((root + 0.12 + 0.11 / root) * statistic))


def _finite(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Finite values and the share that is missing; inf counts as missing."""
    if values.size == 0:
        return values, 1.0
    mask = np.isfinite(values)
    kept = int(np.count_nonzero(mask))
    if kept == values.size:
        return values, 0.0
    return values[mask], 1 - kept / values.size
