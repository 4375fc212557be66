"""Drift core: known shifts are found, noise is not, and edge cases give clear results."""

from __future__ import annotations

import dataclasses
import json
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml_platform.core.drift import (
    ColumnDrift,
    DriftInputError,
    DriftThresholds,
    _js_distance,
    benjamini_hochberg,
    compute_drift,
    concept_drift,
    infer_column_kinds,
)
from ml_platform.core.drift_plot import plot_top_drifted
from ml_platform.core.drift_render import render

SVG = "{http://www.w3.org/2000/svg}"


def _one(
    reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray, **kwargs
) -> ColumnDrift:
    report = compute_drift(pd.DataFrame({"x": reference}), pd.DataFrame({"x": current}), **kwargs)
    return report.columns[0]


def _strict_json(payload: dict) -> dict:
    return json.loads(json.dumps(payload, allow_nan=False))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


# --- detection ----------------------------------------------------------------------------------


def test_mean_shift_is_detected_by_normalised_wasserstein(rng):
    column = _one(rng.normal(0, 2, 50_000), rng.normal(1, 2, 50_000))  # 0.5 std
    assert column.drifted
    assert column.distance_name == "wasserstein_norm"
    assert column.distance == pytest.approx(0.5, abs=0.03)
    assert "wasserstein_norm" in column.reason


def test_scale_change_is_detected(rng):
    column = _one(rng.normal(0, 1, 50_000), rng.normal(0, 1.6, 50_000))
    assert column.drifted
    assert column.psi > 0.2


def test_same_distribution_is_not_flagged(rng):
    column = _one(rng.gamma(2, 2, 20_000), rng.gamma(2, 2, 20_000))
    assert not column.drifted
    assert column.reason == "stable"


def test_negligible_differences_at_a_million_rows_are_not_flagged_though_ks_would(rng):
    reference = pd.DataFrame({"a": rng.normal(0, 1, 1_000_000), "b": rng.exponential(1, 1_000_000)})
    current = pd.DataFrame(
        {"a": rng.normal(0.01, 1, 1_000_000), "b": rng.exponential(1.02, 1_000_000)}
    )
    report = compute_drift(reference, current)
    assert not report.dataset_drift
    assert report.drift_share == 0.0
    assert all(c.p_value < 0.05 for c in report.columns)  # a p-value test would flag both


def test_wasserstein_matches_scipy(rng):
    cases = {
        "normal": (rng.normal(0, 1, 200_000), rng.normal(0.2, 1.1, 150_000)),
        "heavy_tail": (rng.pareto(1.5, 200_000), rng.pareto(1.3, 200_000)),
        "integers": (rng.poisson(3, 200_000), rng.poisson(3.4, 200_000)),
        "outliers": (
            np.where(rng.random(200_000) < 0.03, -999.0, rng.normal(0, 1, 200_000)),
            np.where(rng.random(200_000) < 0.03, -999.0, rng.normal(0.3, 1, 200_000)),
        ),
        "far_apart": (rng.normal(0, 1, 100_000), rng.normal(500, 1, 100_000)),
        "tiny": (rng.normal(0, 1, 30), rng.normal(0.5, 1, 20)),
    }
    for name, (reference, current) in cases.items():
        expected = stats.wasserstein_distance(reference, current) / np.std(reference)
        assert _one(reference, current).distance == pytest.approx(expected, rel=2e-3), name


def test_ks_p_value_matches_scipy(rng):
    cases = {
        "large": (rng.normal(0, 1, 300_000), rng.normal(0.005, 1, 300_000)),
        "uneven": (rng.normal(0, 1, 200_000), rng.normal(0.02, 1, 20_000)),
        "small": (rng.normal(0, 1, 400), rng.normal(0.2, 1, 300)),
    }
    for name, (reference, current) in cases.items():
        expected = stats.ks_2samp(reference, current).pvalue
        assert _one(reference, current).p_value == pytest.approx(expected, rel=0.15, abs=0.01), name


def test_psi_matches_the_textbook_decile_definition(rng):
    reference, current = rng.normal(0, 1, 100_000), rng.normal(0.4, 1.2, 100_000)
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    shares = [
        np.maximum(np.bincount(np.searchsorted(edges, v), minlength=10) / v.size, 1e-4)
        for v in (reference, current)
    ]
    expected = np.sum((shares[1] - shares[0]) * np.log(shares[1] / shares[0]))
    assert _one(reference, current).psi == pytest.approx(expected, rel=0.01)


def test_category_mix_shift_is_detected_and_same_mix_is_not(rng):
    labels = np.array(["a", "b", "c", "d"], dtype=object)
    reference = labels[rng.choice(4, 20_000, p=[0.4, 0.3, 0.2, 0.1])]
    same = labels[rng.choice(4, 20_000, p=[0.4, 0.3, 0.2, 0.1])]
    shifted = labels[rng.choice(4, 20_000, p=[0.2, 0.2, 0.3, 0.3])]
    stable, drifted = _one(reference, same), _one(reference, shifted)
    assert stable.kind == "categorical" and not stable.drifted
    assert drifted.drifted and drifted.distance_name == "js_distance"
    assert 0 < drifted.distance <= 1


def test_unseen_and_vanished_categories_give_finite_drift():
    reference = pd.Series(["a"] * 500 + ["b"] * 500)
    unseen = _one(reference, pd.Series(["a"] * 500 + ["b"] * 200 + ["new"] * 300))
    vanished = _one(reference, pd.Series(["a"] * 1000))
    for column in (unseen, vanished):
        assert column.drifted
        assert np.isfinite(column.psi) and np.isfinite(column.distance)
        assert column.p_value is not None and column.p_value < 1e-6


def test_identifier_like_columns_do_not_drift_between_random_halves(rng):
    ids = pd.Series([f"id{i}" for i in range(20_000)])
    shuffled = ids.sample(frac=1.0, random_state=1).reset_index(drop=True)
    column = _one(shuffled[:10_000], shuffled[10_000:])
    assert not column.drifted
    assert "rare vs unseen" in column.reason


def test_missing_share_change_is_drift(rng):
    values = rng.normal(0, 1, 10_000)
    current = values.copy()
    current[:2_000] = np.nan
    column = _one(values, current)
    assert column.drifted
    assert column.missing_share_current == pytest.approx(0.2)
    assert "missing share change 0.2 >= 0.1" in column.reason


def test_dataset_drift_uses_share_of_drifted_columns(rng):
    reference = pd.DataFrame({c: rng.normal(0, 1, 5_000) for c in "abc"})
    current = pd.DataFrame(
        {"a": rng.normal(1, 1, 5_000), "b": rng.normal(1, 1, 5_000), "c": rng.normal(0, 1, 5_000)}
    )
    report = compute_drift(reference, current)
    assert report.drifted_columns == ["a", "b"]
    assert report.drift_share == pytest.approx(2 / 3)
    assert report.dataset_drift
    strict = compute_drift(reference, current, thresholds=DriftThresholds(drift_share=0.7))
    assert not strict.dataset_drift


# --- edge cases ---------------------------------------------------------------------------------


def test_constant_in_both_windows_is_stable():
    column = _one(np.full(100, 3.0), np.full(80, 3.0))
    assert not column.drifted
    assert column.reason == "constant in both windows"
    assert column.psi == 0.0


def test_constant_reference_with_a_different_current_is_drift():
    column = _one(np.full(100, 3.0), np.full(80, 4.0))
    assert column.drifted
    assert column.reason.startswith("constant in reference (3)")
    assert column.distance is None  # normalising by a zero std is undefined, so no number


def test_constant_categorical_reference_with_new_values_is_drift():
    column = _one(pd.Series(["x"] * 50), pd.Series(["x"] * 10 + ["y"] * 40))
    assert column.drifted
    assert "constant in reference" in column.reason


@pytest.mark.parametrize("kind_values", [np.nan, None])
def test_all_missing_columns_give_clear_results_without_nan(kind_values):
    empty = pd.Series([kind_values] * 50, dtype=object if kind_values is None else float)
    both = _one(empty, empty.copy())
    assert not both.drifted
    assert both.reason == "all values missing in both windows"
    assert both.psi is None and both.distance is None
    one_side = _one(pd.Series(np.arange(50, dtype=float)), empty)
    assert one_side.drifted
    assert one_side.reason.startswith("all values missing in the current window")


def test_infinities_count_as_missing_and_json_stays_strict(rng):
    current = rng.normal(0, 1, 1_000)
    current[:5] = np.inf
    reference = pd.DataFrame({"x": rng.normal(0, 1, 1_000), "y": [np.nan] * 1_000})
    report = compute_drift(reference, pd.DataFrame({"x": current, "y": [np.nan] * 1_000}))
    payload = _strict_json(report.to_dict())
    assert payload["columns"][0]["missing_share_current"] == pytest.approx(0.005)
    assert payload["columns"][1]["psi"] is None
    assert set(payload) >= {"drift_share", "dataset_drift", "columns", "max_psi"}
    assert json.loads(render(report, "json"))["dataset_drift"] == report.dataset_drift


@pytest.mark.parametrize("window", ["reference", "current"])
def test_empty_window_is_an_input_error(window):
    full, empty = pd.DataFrame({"x": [1.0, 2.0]}), pd.DataFrame({"x": pd.Series([], dtype=float)})
    frames = (empty, full) if window == "reference" else (full, empty)
    with pytest.raises(DriftInputError, match=f"the {window} window is empty"):
        compute_drift(*frames)


def test_mismatched_columns_are_named_unless_restricted():
    reference = pd.DataFrame({"a": [1.0, 2.0, 3.0], "only_ref": [1, 2, 3]})
    current = pd.DataFrame({"a": [1.0, 2.0, 3.0], "only_cur": ["x", "y", "z"]})
    with pytest.raises(DriftInputError, match=r"only in reference \['only_ref'\].*\['only_cur'\]"):
        compute_drift(reference, current)
    report = compute_drift(reference, current, columns={"a": "numeric"})
    assert [c.column for c in report.columns] == ["a"]
    with pytest.raises(DriftInputError, match="'only_cur' \\(missing from reference\\)"):
        compute_drift(reference, current, columns={"only_cur": "categorical"})


def test_bad_kinds_and_non_numeric_values_are_input_errors():
    frame = pd.DataFrame({"a": ["1", "2", "oops"]})
    with pytest.raises(DriftInputError, match="unknown column kinds"):
        compute_drift(frame, frame, columns={"a": "text"})
    with pytest.raises(DriftInputError, match="'a' is compared as numeric"):
        compute_drift(frame, frame, columns={"a": "numeric"})
    dates = pd.DataFrame({"when": pd.date_range("2024-01-01", periods=3)})
    with pytest.raises(DriftInputError, match="no numeric or categorical columns"):
        compute_drift(dates, dates)


def test_thresholds_are_validated():
    with pytest.raises(DriftInputError, match="psi must be a positive number"):
        DriftThresholds(psi=-1)
    with pytest.raises(DriftInputError, match="drift_share"):
        DriftThresholds(drift_share=0)


def test_infer_column_kinds():
    frame = pd.DataFrame(
        {
            "price": [1.5, 2.5, 3.5],
            "promo": [0, 1, 0],  # low-cardinality ints stay numeric
            "flag": [True, False, True],
            "store": ["S1", "S2", "S1"],
            "grade": pd.Categorical(["a", "b", "a"]),
            "name": pd.array(["x", "y", None], dtype="string"),
            "day": ["2024-01-01", "2024-01-02", "2024-01-03"],
            "stamp": pd.date_range("2024-01-01", periods=3),
        }
    )
    assert infer_column_kinds(frame) == {
        "price": "numeric",
        "promo": "numeric",
        "flag": "categorical",
        "store": "categorical",
        "grade": "categorical",
        "name": "categorical",
    }


# --- p-values, concept drift, rendering ---------------------------------------------------------


def _benjamini_hochberg_by_hand(p_values: list[float]) -> np.ndarray:
    """The step-up formula drift.py used before scipy's false_discovery_control replaced it."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def _js_distance_by_hand(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """The base-2 formula drift.py used before scipy's jensenshannon replaced it."""
    p, q = ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()
    m = (p + q) / 2

    def xlog2(a: np.ndarray) -> np.ndarray:
        return a * np.log2(np.divide(a, m, out=np.ones_like(a), where=a > 0))

    return float(np.sqrt(max(0.5 * np.sum(xlog2(p)) + 0.5 * np.sum(xlog2(q)), 0.0)))


def test_benjamini_hochberg_on_a_hand_worked_example():
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4/1, x4/2, x4/3, x4/4 = .04, .06, .0533, .2 -> step-up min
    adjusted = stats.false_discovery_control([0.01, 0.04, 0.03, 0.20], method="bh")
    np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    assert stats.false_discovery_control([0.9, 0.8], method="bh").max() <= 1.0


def test_our_benjamini_hochberg_is_scipys(rng):
    """drift.py writes BH out to keep `scipy.stats` (slow to import) off the CLI path."""
    for size in (0, 1, 2, 5, 40):
        p_values = rng.random(size) ** 3
        p_values[: size // 2] = p_values[0] if size else p_values[:0]  # ties
        expected = stats.false_discovery_control(p_values, method="bh") if size else []
        np.testing.assert_allclose(benjamini_hochberg(p_values), expected, rtol=1e-15)
        np.testing.assert_allclose(_benjamini_hochberg_by_hand(p_values), expected, rtol=1e-12)


def test_js_distance_matches_the_hand_formula(rng):
    for size in (2, 3, 10, 30):
        ref = rng.integers(0, 1_000, size)
        ref[0] += 1
        for cur in (ref, ref * 3, ref + (rng.random(size) < 0.2), rng.integers(0, 1_000, size)):
            cur = cur.copy()
            cur[-1] += 1
            assert _js_distance(ref, cur) == pytest.approx(_js_distance_by_hand(ref, cur), abs=1e-9)
    assert _js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    # near-equal shares: the divergence may round below zero, which is a distance of 0, not NaN
    ref, cur = np.array([261_986, 9_834_939, 145_426]), np.array([785_958, 29_504_820, 436_278])
    assert _js_distance(ref, cur) == 0.0


def test_report_adjusts_p_values_across_columns(rng):
    reference = pd.DataFrame({c: rng.normal(0, 1, 2_000) for c in "abcd"})
    current = pd.DataFrame({c: rng.normal(0.05 * i, 1, 2_000) for i, c in enumerate("abcd")})
    report = compute_drift(reference, current)
    raw = [c.p_value for c in report.columns]
    np.testing.assert_allclose(
        [c.p_value_adjusted for c in report.columns], _benjamini_hochberg_by_hand(raw)
    )


def test_concept_drift_compares_mae_with_holdout():
    drifted = concept_drift(np.array([-2.0, 2.0, 2.0, np.nan]), holdout_mae=1.0, tolerance=1.25)
    assert drifted == {
        "mae_current": 2.0,
        "mae_holdout": 1.0,
        "ratio": 2.0,
        "drifted": True,
        "n": 3,
    }
    assert not concept_drift(np.array([1.0, 1.2]), holdout_mae=1.0, tolerance=1.25)["drifted"]
    empty = concept_drift(np.array([]), holdout_mae=1.0, tolerance=1.25)
    assert empty["n"] == 0 and empty["ratio"] is None and empty["drifted"] is False
    with pytest.raises(DriftInputError):
        concept_drift(np.array([1.0]), holdout_mae=float("nan"), tolerance=1.25)


def test_markdown_html_and_plot_render_the_report(rng):
    reference = pd.DataFrame(
        {"sales|units": rng.normal(0, 1, 5_000), "store": rng.choice(["a", "b"], 5_000)}
    )
    current = pd.DataFrame(
        {"sales|units": rng.normal(1, 1, 5_000), "store": rng.choice(["a", "b"], 5_000)}
    )
    report = compute_drift(reference, current)
    markdown = report.to_markdown()
    assert "| column | kind | psi | distance | threshold |" in markdown
    assert "sales\\|units" in markdown and "**yes**" in markdown
    page = render(report, "html")
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and "sales|units" in page
    svg = ElementTree.fromstring(plot_top_drifted(reference, current, report, top=2))
    titles = [t.text for t in svg.iter(f"{SVG}text") if t.text and ": " in t.text]
    assert [t.split(" (")[0] for t in titles] == ["sales|units: drifted", "store: stable"]
    assert len(list(svg.iter(f"{SVG}path"))) == 4  # two panels' axes, two histograms
    bars = [r for r in svg.iter(f"{SVG}rect") if float(r.get("height", 0)) > 0]
    assert len(bars) >= 1 + 4 + 4  # background, 2 legend squares per panel, 2 stores × 2 windows
    with pytest.raises(ValueError, match="unknown format"):
        render(report, "xml")  # type: ignore[arg-type]


def test_plot_escapes_hostile_names_and_says_when_values_are_missing():
    hostile = "<script>alert(1)</script> & co"
    reference = pd.DataFrame({hostile: [1.0, 2.0, 3.0] * 50, "gone": [1.0] * 150})
    current = pd.DataFrame({hostile: [5.0, 6.0, 7.0] * 50, "gone": [np.nan] * 150})
    report = compute_drift(reference, current)
    text = plot_top_drifted(reference, current, report, top=2)
    assert "<script>" not in text
    svg = ElementTree.fromstring(text)  # well-formed XML despite the names
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert any(label and label.startswith(hostile + ": drifted") for label in labels)
    nothing = ElementTree.fromstring(
        plot_top_drifted(reference, current, dataclasses.replace(report, columns=[]))
    )
    assert [t.text for t in nothing.iter(f"{SVG}text")] == ["no columns compared"]


# --- scale --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_million_rows_by_twenty_columns_shuffled_is_no_drift(rng):
    """At 1M rows every p-value test is sensitive; a shuffle of the same rows must still pass.
    (Speed is measured in bench/drift_vs_evidently.py, not timed here.)"""
    rows = 1_000_000
    labels = np.array(["a", "b", "c", "d", "e"], dtype=object)
    data = {f"n{i}": rng.normal(0, 1, rows) for i in range(15)}
    data.update({f"c{i}": labels[rng.integers(0, 5, rows)] for i in range(5)})
    reference = pd.DataFrame(data)
    current = reference.sample(frac=1.0, random_state=0).reset_index(drop=True)
    report = compute_drift(reference, current)
    assert report.drift_share == 0.0


def _quality_windows(seed: int, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current windows: some columns unshifted, some with an injected shift.

    Real unshifted data is never exactly identically distributed; the `tiny_*` columns carry the
    practically irrelevant differences that make p-value tests flag nearly everything at 1M rows.
    """
    rng = np.random.default_rng(seed)
    mix, shifted_mix, tiny_mix = [0.4, 0.3, 0.2, 0.1], [0.25] * 4, [0.41, 0.3, 0.19, 0.1]

    def categories(p: list[float]) -> pd.Categorical:
        return pd.Categorical.from_codes(rng.choice(4, rows, p=p), categories=list("abcd"))

    reference = pd.DataFrame(
        {
            "same_normal": rng.normal(0, 1, rows),
            "same_category": categories(mix),
            "tiny_mean": rng.normal(0, 1, rows),
            "tiny_scale": rng.lognormal(0, 0.5, rows),
            "tiny_mix": categories(mix),
            "shift_mean": rng.normal(0, 1, rows),
            "shift_scale": rng.normal(0, 1, rows),
            "shift_mix": categories(mix),
        }
    )
    current = pd.DataFrame(
        {
            "same_normal": rng.normal(0, 1, rows),
            "same_category": categories(mix),
            "tiny_mean": rng.normal(0.01, 1, rows),
            "tiny_scale": rng.lognormal(0, 0.51, rows),
            "tiny_mix": categories(tiny_mix),
            "shift_mean": rng.normal(0.3, 1, rows),  # 0.3 std
            "shift_scale": rng.normal(0, 1.5, rows),
            "shift_mix": categories(shifted_mix),
        }
    )
    return reference, current


@pytest.mark.slow
def test_detection_quality_over_twenty_seeds():
    flagged_ours, flagged_p, unshifted_tests, found, shifted_tests = 0, 0, 0, 0, 0
    for seed in range(20):
        reference, current = _quality_windows(seed, rows=1_000_000)
        for column in compute_drift(reference, current).columns:
            if column.column.startswith("shift_"):
                shifted_tests += 1
                found += column.drifted
            else:
                unshifted_tests += 1
                flagged_ours += column.drifted
                flagged_p += column.p_value < 0.05  # raw KS / chi-square, as other tools decide
    assert found / shifted_tests >= 0.95
    assert flagged_ours / unshifted_tests <= 0.05
    assert flagged_ours < flagged_p
    assert flagged_p / unshifted_tests > 0.5  # p-values flag the irrelevant differences
