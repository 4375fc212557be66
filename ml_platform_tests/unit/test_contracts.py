"""Hostile landing files: every one gets a clear message or a quarantine, never a traceback."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from ml_platform.core.contracts import (
    REASONS_COLUMN,
    ContractViolation,
    LandingFileError,
    read_landing_csv,
    validate_batch,
)

DAY = date(2024, 1, 5)
HEADER = "date,store_id,product_id,units_sold,price,promo\n"


def rows(n: int, start: int = 1) -> str:
    return "".join(f"2024-01-05,S{start + i:04d},P01,{10 + i},2.50,0\n" for i in range(n))


def lenient(spec):
    return spec.contract.model_copy(update={"max_quarantine_fraction": 1.0})


def validate(text: str | bytes, contract):
    data = text.encode() if isinstance(text, str) else text
    return validate_batch(read_landing_csv(data, "test.csv"), contract, DAY)


def test_clean_batch_passes_with_contract_dtypes(spec):
    result = validate(HEADER + rows(5), spec.contract)
    assert len(result.valid) == 5 and result.quarantine.empty
    assert str(result.valid["units_sold"].dtype) == "int64"
    assert str(result.valid["date"].dtype) == "datetime64[ns]"
    assert result.valid["price"].tolist() == [2.5] * 5


@pytest.mark.parametrize(
    ("bad_row", "rule"),
    [
        ("2024-01-05,S0100,P01,-3,2.50,0\n", "greater_than_or_equal_to"),
        ("2024-01-05,S0100,P01,abc,2.50,0\n", "parse_int"),
        ("2024-01-05,S0100,P01,,2.50,0\n", "not_nullable"),
        ("2024-01-05,ZZ-404,P01,3,2.50,0\n", "str_matches"),
        ("2024-13-45,S0100,P01,3,2.50,0\n", "parse_date"),
        ("2024-01-04,S0100,P01,3,2.50,0\n", "equals_partition"),
        ("2024-01-05,S0100,P01,1e300,2.50,0\n", "int_overflow"),
        ("2024-01-05,S0100,P01,250000,2.50,0\n", "less_than_or_equal_to"),
        ("2024-01-05,S0100,P01,3,inf,0\n", "parse_float"),
        ("2024-01-05,S0100,P01,3.5,2.50,0\n", "parse_int"),
        ("2024-01-05,S0100,P01,3,2.50,7\n", "isin"),
        ("2024-01-05,S0001,P01,10,2.50,0\n", "duplicate_key"),
        ("2024-01-05,S0100,P01,3,2.50,0,surplus\n", "malformed_line"),
    ],
)
def test_bad_row_is_quarantined_with_named_rule(spec, bad_row, rule):
    result = validate(HEADER + rows(10) + bad_row, lenient(spec))
    assert len(result.valid) == 10
    assert len(result.quarantine) == 1
    assert rule in result.quarantine[REASONS_COLUMN].iloc[0]
    assert result.n_rows == 11  # nothing lost: valid + quarantine == input


def test_quarantine_keeps_the_original_text(spec):
    result = validate(HEADER + rows(3) + "2024-01-05,S0100,P01,abc,2.50,0\n", lenient(spec))
    assert result.quarantine["units_sold"].tolist() == ["abc"]


def test_too_many_bad_rows_rejects_the_batch_naming_the_rule(spec):
    bad = "".join(f"2024-01-05,S{i:04d},P01,-1,2.50,0\n" for i in range(100, 110))
    with pytest.raises(ContractViolation, match="max_quarantine_fraction") as exc:
        validate(HEADER + rows(10) + bad, spec.contract)
    assert "units_sold failed greater_than_or_equal_to" in str(exc.value)
    assert exc.value.failure_cases["failures"].sum() == 10


def test_missing_column_names_the_column(spec):
    text = "date,store_id,product_id,units,price,promo\n" + rows(3)
    with pytest.raises(ContractViolation, match=r"missing required columns \['units_sold'\]"):
        validate(text, spec.contract)


def test_unparseable_dates_reject_the_batch(spec):
    text = HEADER + "".join(f"05/01/2024,S{i:04d},P01,3,2.50,0\n" for i in range(1, 20))
    with pytest.raises(ContractViolation, match="date failed parse_date"):
        validate(text, spec.contract)


def test_empty_file_is_a_clear_error(spec):
    with pytest.raises(LandingFileError, match="empty"):
        validate(b"", spec.contract)
    with pytest.raises(LandingFileError, match="empty"):
        validate(b"  \n\n", spec.contract)


def test_header_only_file_is_a_clear_error(spec):
    with pytest.raises(ContractViolation, match="no rows"):
        validate(HEADER, spec.contract)


def test_binary_garbage_is_a_clear_error(spec):
    with pytest.raises(LandingFileError, match="not UTF-8"):
        validate(b"\xff\xfe\x00\x81garbage", spec.contract)


def test_extra_columns_are_ignored_not_fatal(spec):
    text = HEADER.strip() + ",note\n" + "".join(r.strip() + ",hi\n" for r in rows(3).splitlines())
    result = validate(text, spec.contract)
    assert list(result.valid.columns) == list(spec.contract.columns)


def test_whitespace_in_header_and_values_is_tolerated(spec):
    text = " date , store_id,product_id,units_sold,price,promo\n2024-01-05, S0001 ,P01, 4 ,2.5,0\n"
    result = validate(text, spec.contract)
    assert result.valid["units_sold"].tolist() == [4]


def test_raw_reader_never_interprets_values():
    frame = read_landing_csv(b"a,b\nNA,007\n")
    assert frame.to_dict("records") == [{"a": "NA", "b": "007"}]
    assert all(pd.api.types.is_object_dtype(t) for t in frame.dtypes)
