"""The drift report's picture: reference against current for the most drifted columns, as SVG.

Hand-written SVG, not matplotlib. Importing and rendering matplotlib cost about a second of every
daily run, more than the day's data work. The SVG is a few KB of text that the Dagster UI (and
any browser) draws sharply at any zoom, and it needs no extra dependency.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from ml_platform.core.drift import (
    NUMERIC,
    ColumnDrift,
    DriftReport,
    finite_floats,
    format_stat,
    severity,
)

PANEL_WIDTH, PANEL_HEIGHT = 330, 230
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 44, 12, 40, 48  # margins inside a panel
PLOT_WIDTH = PANEL_WIDTH - PLOT_LEFT - PLOT_RIGHT
PLOT_HEIGHT = PANEL_HEIGHT - PLOT_TOP - PLOT_BOTTOM
X_AXIS_Y = PANEL_HEIGHT - PLOT_BOTTOM  # the baseline every bar and histogram stands on
HISTOGRAM_BINS = 40
MAX_CATEGORIES = 10
RANGE_SAMPLE = 20_000  # the plotted range comes from a strided sample of at most this many values
COLORS = {"reference": "#4c78a8", "current": "#f58518"}
FONT = 'font-family="sans-serif"'


def plot_top_drifted(
    reference: pd.DataFrame, current: pd.DataFrame, report: DriftReport, *, top: int = 3
) -> str:
    """SVG of reference vs current distributions for the `top` most drifted columns."""
    ranked = sorted(report.columns, key=lambda c: (c.drifted, severity(c, report.thresholds)))
    chosen = ranked[::-1][: max(top, 1)]
    panels = max(len(chosen), 1)
    width, height = PANEL_WIDTH * panels, PANEL_HEIGHT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if not chosen:
        parts.append(_text(width / 2, height / 2, "no columns compared", anchor="middle"))
    for index, column in enumerate(chosen):
        parts.append(f'<g transform="translate({index * PANEL_WIDTH},0)">')
        parts.extend(_panel(reference, current, column))
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(reference: pd.DataFrame, current: pd.DataFrame, column: ColumnDrift) -> list[str]:
    verdict = "drifted" if column.drifted else "stable"
    title = f"{column.column}: {verdict} (psi {format_stat(column.psi)})"
    out = [_text(PANEL_WIDTH / 2, 16, title, anchor="middle", size=12, weight="bold")]
    out.extend(_legend())
    if column.kind == NUMERIC:
        out.extend(_numeric(reference[column.column], current[column.column]))
    else:
        out.extend(_categorical(reference[column.column], current[column.column]))
    return out


def _numeric(ref: pd.Series, cur: pd.Series) -> list[str]:
    """Step histograms of densities on a shared range (0.5 %–99.5 % quantiles of both windows)."""
    values = {label: finite_floats(s, label) for label, s in (("reference", ref), ("current", cur))}
    present = [v for v in values.values() if v.size]
    if not present:
        return [_text(PANEL_WIDTH / 2, PANEL_HEIGHT / 2, "all values missing", anchor="middle")]
    lo = min(float(np.quantile(_sample(v), 0.005)) for v in present)
    hi = max(float(np.quantile(_sample(v), 0.995)) for v in present)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    densities = {
        label: np.histogram(v, bins=HISTOGRAM_BINS, range=(lo, hi), density=True)[0]
        for label, v in values.items()
        if v.size
    }
    y_max = max(float(d.max()) for d in densities.values()) or 1.0
    out = _axes(f"{lo:.3g}", f"{(lo + hi) / 2:.3g}", f"{hi:.3g}", y_max)
    for label, density in densities.items():
        out.append(_steps(density, y_max, fill=label == "reference", color=COLORS[label]))
    return out


def _categorical(ref: pd.Series, cur: pd.Series) -> list[str]:
    """Grouped bars of category shares, the ten largest in either window."""
    shares = pd.DataFrame(
        {"reference": ref.value_counts(normalize=True), "current": cur.value_counts(normalize=True)}
    ).fillna(0.0)
    shares = shares.loc[shares.max(axis=1).sort_values(ascending=False).index[:MAX_CATEGORIES]]
    y_max = float(shares.to_numpy().max()) if len(shares) else 1.0
    out = _axes("", "", "", y_max or 1.0)
    slot = PLOT_WIDTH / max(len(shares), 1)
    for i, (category, row) in enumerate(shares.iterrows()):
        for j, label in enumerate(("reference", "current")):
            bar = row[label] / (y_max or 1.0) * PLOT_HEIGHT
            x = PLOT_LEFT + i * slot + slot * (0.1 + 0.4 * j)
            out.append(
                f'<rect x="{x:.1f}" y="{X_AXIS_Y - bar:.1f}" width="{slot * 0.4:.1f}" '
                f'height="{bar:.1f}" fill="{COLORS[label]}"/>'
            )
        x_label, y_label = PLOT_LEFT + (i + 0.5) * slot, X_AXIS_Y + 12
        out.append(
            f'<text x="{x_label:.1f}" y="{y_label}" font-size="9" {FONT} text-anchor="end" '
            f'transform="rotate(-45 {x_label:.1f} {y_label})">{escape(str(category)[:12])}</text>'
        )
    return out


def _axes(x_lo: str, x_mid: str, x_hi: str, y_max: float) -> list[str]:
    right, bottom = PANEL_WIDTH - PLOT_RIGHT, X_AXIS_Y
    out = [
        f'<path d="M{PLOT_LEFT},{PLOT_TOP} V{bottom} H{right}" fill="none" stroke="#333"/>',
        _text(PLOT_LEFT - 4, bottom, "0", anchor="end", size=9),
        _text(PLOT_LEFT - 4, PLOT_TOP + 8, f"{y_max:.2g}", anchor="end", size=9),
    ]
    for x, label, anchor in (
        (PLOT_LEFT, x_lo, "start"),
        ((PLOT_LEFT + right) / 2, x_mid, "middle"),
        (right, x_hi, "end"),
    ):
        if label:
            out.append(_text(x, bottom + 14, label, anchor=anchor, size=9))
    return out


def _steps(density: np.ndarray, y_max: float, *, fill: bool, color: str) -> str:
    """A stairs outline of a histogram; filled for the reference, a line for the current."""
    step = PLOT_WIDTH / len(density)
    heights = X_AXIS_Y - density / y_max * PLOT_HEIGHT
    points = [f"M{PLOT_LEFT},{X_AXIS_Y}"]
    for i, y in enumerate(heights):
        points.append(f"V{y:.1f} H{PLOT_LEFT + (i + 1) * step:.1f}")
    points.append(f"V{X_AXIS_Y}")
    if fill:
        style = f'fill="{color}" fill-opacity="0.45" stroke="none"'
    else:
        style = f'fill="none" stroke="{color}" stroke-width="1.6"'
    return f'<path d="{" ".join(points)}" {style}/>'


def _legend() -> list[str]:
    out = []
    for i, label in enumerate(("reference", "current")):
        x = PANEL_WIDTH - PLOT_RIGHT - 150 + i * 78
        out.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{COLORS[label]}"/>')
        out.append(_text(x + 14, 33, label, size=10))
    return out


def _text(
    x: float, y: float, content: str, *, anchor: str = "start", size: int = 11, weight: str = ""
) -> str:
    bold = f' font-weight="{weight}"' if weight else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" {FONT} text-anchor="{anchor}"{bold}>'
        f"{escape(content)}</text>"
    )


def _sample(values: np.ndarray) -> np.ndarray:
    return values[:: max(1, values.size // RANGE_SAMPLE)]
