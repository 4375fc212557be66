"""Drift reports as Markdown (Dagster metadata), JSON (machines) or a self-contained HTML page."""

from __future__ import annotations

import html
import json
from typing import Literal

from ml_platform.core.drift import NUMERIC, DriftReport

FORMATS = ("markdown", "json", "html")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2328; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.drifted td { background: #fff1f0; }
.verdict { font-size: 1.1rem; font-weight: 600; }
"""


def render(report: DriftReport, fmt: Literal["markdown", "json", "html"]) -> str:
    """One report, three audiences; JSON is strict (no NaN), so any parser accepts it."""
    if fmt == "markdown":
        return report.to_markdown()
    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, allow_nan=False)
    if fmt == "html":
        return _html(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {list(FORMATS)}")


def _html(report: DriftReport) -> str:
    t = report.thresholds
    verdict = "Dataset drift detected" if report.dataset_drift else "No dataset drift"
    rows = []
    for c in report.columns:
        limit = t.wasserstein if c.kind == NUMERIC else t.js
        cells = [
            _td(c.column),
            _td(c.kind),
            _td(_num(c.psi), numeric=True),
            _td(f"{_num(c.distance)} ({c.distance_name})", numeric=True),
            _td(f"psi {t.psi:g}, {c.distance_name} {limit:g}"),
            _td(f"{c.missing_share_reference:.1%} → {c.missing_share_current:.1%}"),
            _td(_num(c.p_value_adjusted), numeric=True),
            _td("yes" if c.drifted else "no"),
            _td(c.reason),
        ]
        css = ' class="drifted"' if c.drifted else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "column",
            "kind",
            "psi",
            "distance",
            "threshold",
            "missing ref → cur",
            "p (BH)",
            "drifted",
            "reason",
        )
    )
    summary = (
        f"{len(report.drifted_columns)} of {len(report.columns)} columns drifted "
        f"(share {report.drift_share:.2f}, threshold {t.drift_share:g}); "
        f"reference {report.n_reference:,} rows, current {report.n_current:,} rows."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Drift report</title><style>{_STYLE}</style></head><body>"
        f'<h1>Drift report</h1><p class="verdict">{verdict}</p><p>{html.escape(summary)}</p>'
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "</body></html>\n"
    )


def _td(text: str, *, numeric: bool = False) -> str:
    css = ' class="num"' if numeric else ""
    return f"<td{css}>{html.escape(str(text))}</td>"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
