"""`ml-platform drift`: exit codes 0/1/2, formats, and one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_platform.drift_cli import drift_command

SPEC = Path(__file__).resolve().parents[2] / "ml_platform" / "pipelines" / "sales_forecast.yaml"


def _sales(seed: int, rows: int = 4_000, units_mean: float = 5.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=rows, freq="h").strftime("%Y-%m-%d"),
            "store_id": rng.choice(["S0001", "S0002", "S0003"], rows),
            "product_id": rng.choice(["P01", "P02"], rows),
            "units_sold": rng.poisson(units_mean, rows),
            "price": rng.gamma(2.0, 3.0, rows).round(2),
            "promo": rng.integers(0, 2, rows),
        }
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "reference": tmp_path / "reference.csv",
        "same": tmp_path / "same.parquet",
        "drifted": tmp_path / "drifted.csv",
    }
    _sales(0).to_csv(paths["reference"], index=False)
    _sales(1).to_parquet(paths["same"])
    drifted = _sales(2, units_mean=9.0)
    drifted["price"] *= 1.8
    drifted["store_id"] = "S0001"
    drifted.to_csv(paths["drifted"], index=False)
    return paths


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    code = drift_command([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_no_drift_exits_zero_with_markdown(files, capsys):
    code, out, err = _run(capsys, files["reference"], files["same"])
    assert code == 0, err
    assert "**Dataset drift: no**" in out
    assert "| units_sold | numeric |" in out
    assert "date" not in out.split("\n", 1)[1]  # ISO date strings are not compared


def test_drift_exits_one_and_json_lists_every_column(files, capsys):
    code, out, _ = _run(capsys, files["reference"], files["drifted"], "--format", "json")
    assert code == 1
    payload = json.loads(out)
    assert payload["dataset_drift"] is True
    assert payload["drift_share"] >= 0.5
    by_name = {c["column"]: c for c in payload["columns"]}
    assert set(by_name) == {"store_id", "product_id", "units_sold", "price", "promo"}
    assert by_name["units_sold"]["drifted"] and not by_name["promo"]["drifted"]
    assert {"psi", "distance", "p_value_adjusted", "reason"} <= set(by_name["price"])


def test_spec_sets_kinds_and_thresholds(files, capsys):
    code, out, _ = _run(
        capsys, files["reference"], files["drifted"], "--spec", SPEC, "--format", "json"
    )
    assert code == 1
    payload = json.loads(out)
    kinds = {c["column"]: c["kind"] for c in payload["columns"]}
    assert kinds == {
        "store_id": "categorical",
        "product_id": "categorical",
        "units_sold": "numeric",
        "price": "numeric",
        "promo": "numeric",
    }
    assert payload["thresholds"]["psi"] == 0.2


def test_threshold_flags_and_columns_change_the_decision(files, capsys):
    code, out, _ = _run(
        capsys,
        files["reference"],
        files["drifted"],
        "--columns",
        "promo,product_id,units_sold",
        "--threshold-psi",
        "100",
        "--threshold-wasserstein",
        "100",
        "--format",
        "json",
    )
    assert code == 0
    payload = json.loads(out)
    assert [c["column"] for c in payload["columns"]] == ["promo", "product_id", "units_sold"]
    assert payload["dataset_drift"] is False


def test_html_output_is_a_page(files, capsys):
    code, out, _ = _run(capsys, files["reference"], files["drifted"], "--format", "html")
    assert code == 1
    assert out.startswith("<!DOCTYPE html>") and "</table>" in out


def _assert_bad_input(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_missing_file(files, capsys, tmp_path):
    missing = tmp_path / "nope.csv"
    _assert_bad_input(_run(capsys, files["reference"], missing), "nope.csv: no such file")


def test_empty_file(files, capsys, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _assert_bad_input(_run(capsys, files["reference"], empty), "empty.csv: the file is empty")


def test_header_only_file(files, capsys, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("date,store_id,product_id,units_sold,price,promo\n")
    _assert_bad_input(_run(capsys, files["reference"], header), "current window is empty")


def test_malformed_csv(files, capsys, tmp_path):
    broken = tmp_path / "broken.csv"
    broken.write_text('a,b\n1,2\n3,4,5,6\n"unterminated,7\n')
    _assert_bad_input(_run(capsys, files["reference"], broken), "broken.csv: cannot read it")


def test_corrupt_parquet(files, capsys, tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    _assert_bad_input(_run(capsys, corrupt, files["reference"]), "corrupt.parquet: cannot read")


def test_no_common_columns(files, capsys, tmp_path):
    other = tmp_path / "other.csv"
    pd.DataFrame({"x": [1, 2, 3]}).to_csv(other, index=False)
    _assert_bad_input(_run(capsys, files["reference"], other), "only in current ['x']")


def test_unsupported_extension_and_bad_flags(files, capsys, tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("a\n1\n")
    _assert_bad_input(_run(capsys, text, files["reference"]), "unsupported file type")
    _assert_bad_input(
        _run(capsys, files["reference"], files["same"], "--format", "xml"), "invalid choice"
    )
    _assert_bad_input(
        _run(capsys, files["reference"], files["same"], "--threshold-psi", "-1"),
        "psi must be a positive number",
    )
    _assert_bad_input(
        _run(capsys, files["reference"], files["same"], "--columns", "price,ghost"),
        "'ghost' (missing from reference and current)",
    )
    _assert_bad_input(_run(capsys, files["reference"], files["same"], "--spec", tmp_path / "x"))
