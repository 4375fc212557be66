"""Hostile landing files: every one gets a clear message or a quarantine, never a traceback."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_platform.core.contracts import (
    MALFORMED_COLUMN,
    REASONS_COLUMN,
    ContractViolation,
    LandingFileError,
    read_landing_bytes,
    read_landing_csv,
    read_landing_file,
    validate_batch,
)
from ml_platform.core.storage import encode_frame

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


# --- adversarial landing files --------------------------------------------------------------------


def test_full_width_digits_do_not_match_an_ascii_pattern(spec):
    result = validate(HEADER + rows(5) + "2024-01-05,S０００１,P01,3,2.50,0\n", lenient(spec))
    assert len(result.valid) == 5
    assert result.quarantine["store_id"].tolist() == ["S０００１"]
    assert "store_id: str_matches('^S\\d{4}$')" in result.quarantine[REASONS_COLUMN].iloc[0]


@pytest.mark.parametrize(
    ("bad_row", "rule"),
    [
        ("２０２４-01-05,S0100,P01,3,2.50,0\n", "date: parse_date"),
        ("2024-01-05,S0100,P01,１２,2.50,0\n", "units_sold: parse_int"),
        ("2024-01-05,S0100,P01,12,٢.50,0\n", "price: parse_float"),
    ],
)
def test_non_ascii_digits_in_numbers_and_dates_are_quarantined(spec, bad_row, rule):
    result = validate(HEADER + rows(5) + bad_row, lenient(spec))
    assert len(result.valid) == 5 and len(result.quarantine) == 1
    assert rule in result.quarantine[REASONS_COLUMN].iloc[0]


@pytest.mark.parametrize(
    ("bad_row", "column", "value"),
    [
        ("2024-01-05,S0100,P01,8\x00999,2.50,0\n", "units_sold", "8\x00999"),
        ('2024-01-05,S0100,P01,"8\x00",2.50,0\n', "units_sold", "8\x00"),
        ("2024-01-05,S0100\x1f,P01,8,2.50,0\n", "store_id", "S0100\x1f"),  # str.strip eats \x1f
        ("2024-01-05,S0100,P01\x1b[2J,8,2.50,0\n", "product_id", "P01\x1b[2J"),
    ],
)
def test_control_characters_in_a_value_quarantine_the_row_and_are_kept_whole(
    spec, bad_row, column, value
):
    data = (HEADER + rows(5) + bad_row).encode()
    frame = read_landing_csv(data, "test.csv")
    assert frame[column].iloc[-1] == value  # not cut at the NUL
    stored = pd.read_parquet(io.BytesIO(encode_frame(frame).payload))  # what `raw` writes
    assert stored[column].iloc[-1] == value
    result = validate_batch(frame, lenient(spec), DAY)
    assert len(result.valid) == 5
    assert result.quarantine[column].tolist() == [value]
    assert f"{column}: control_character (got {value!r})" in result.quarantine[REASONS_COLUMN][0]


def test_two_extra_fields_on_the_first_row_quarantine_only_that_row(spec):
    result = validate(HEADER + "2024-01-05,S0100,P01,3,2.50,0,x,y\n" + rows(20), spec.contract)
    assert len(result.valid) == 20
    assert result.quarantine[REASONS_COLUMN].tolist() == [
        "_malformed_line: malformed_line (got 'expected 6 fields, saw 8: "
        "2024-01-05,S0100,P01,3,2.50,0,x,y')"
    ]


def test_a_short_row_is_quarantined_as_malformed_not_as_missing_values(spec):
    result = validate(HEADER + rows(20) + "2024-01-05,S0100\n", spec.contract)
    assert len(result.valid) == 20
    (reason,) = result.quarantine[REASONS_COLUMN]
    assert "expected 6 fields, saw 2" in reason and "not_nullable" not in reason


@pytest.mark.parametrize(
    ("body", "saw"),
    [
        ("".join(r + ",\n" for r in rows(5).splitlines()), 7),  # trailing comma on every row
        ("".join("x," + r + "\n" for r in rows(5).splitlines()), 7),  # leading field on every row
        ("".join(r + ",a,b\n" for r in rows(5).splitlines()), 8),
    ],
)
def test_every_row_with_the_wrong_field_count_fails_the_batch_saying_so(spec, body, saw):
    frame = read_landing_csv((HEADER + body).encode())
    assert frame.index.tolist() == list(range(5))  # pandas would make the surplus an index
    with pytest.raises(ContractViolation, match=r"every row \(5\) has a different number") as exc:
        validate_batch(frame, lenient(spec), DAY)
    assert f"expected 6 fields, saw {saw}" in str(exc.value)


def test_a_header_with_a_trailing_comma_names_the_empty_column():
    frame = read_landing_csv(b"a,b,\n1,2,\n")
    assert frame.to_dict("records") == [{"a": "1", "b": "2", "Unnamed: 2": ""}]


@pytest.mark.parametrize(
    ("header", "duplicate"),
    [
        ("date,store_id,product_id,units_sold, units_sold,price,promo\n", "'units_sold'"),
        ("date,store_id,product_id,units_sold,price,promo,date\n", "'date'"),
    ],
)
def test_duplicate_column_names_are_a_clear_error_naming_them(header, duplicate):
    text = header + "2024-01-05,S0001,P01,3,4,2.50,0\n"
    with pytest.raises(LandingFileError, match="duplicate column names") as exc:
        read_landing_csv(text.encode(), "2024-01-05.csv")
    assert duplicate in str(exc.value) and "2024-01-05.csv" in str(exc.value)


def test_reserved_column_names_in_the_header_are_refused():
    with pytest.raises(LandingFileError, match="reserved column names"):
        read_landing_csv(f"a,{MALFORMED_COLUMN}\n1,2\n".encode())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('a,b\n1,"2\n3,4\n', "quote that is never closed"),
        ('a,b\n1,"2"x\n', "line 2"),
        ("a,\x00b\n1,2\n", "control character"),
    ],
)
def test_unreadable_csv_is_a_clear_error_not_silently_swallowed_rows(text, problem):
    with pytest.raises(LandingFileError, match=problem):
        read_landing_csv(text.encode())


def test_a_million_duplicated_rows_are_rejected_quickly_with_the_same_reason(spec):
    line = b"2024-01-05,S0001,P01,10,2.50,0\n"
    frame = read_landing_csv(HEADER.encode() + line * 1_000_000, "2024-01-05.csv")
    with pytest.raises(ContractViolation, match=r"quarantine fraction 100\.0%") as exc:
        validate_batch(frame, spec.contract, DAY)
    assert "date+store_id+product_id failed duplicate_key (999999 rows" in str(exc.value)
    assert exc.value.failure_cases.to_dict("records") == [
        {
            "column": "date+store_id+product_id",
            "check": "duplicate_key",
            "failures": 999_999,
            "example": "2024-01-05, S0001, P01",
        }
    ]


def test_duplicate_keys_keep_the_first_row_and_compare_parsed_values(spec):
    text = HEADER + rows(3) + "2024-01-05, S0002 ,P01,99,2.50,0\n" + rows(1, start=3)
    result = validate(text, lenient(spec))
    assert result.valid["units_sold"].tolist() == [10, 11, 12]  # the first of each key stays
    assert result.quarantine[REASONS_COLUMN].tolist() == [
        "date+store_id+product_id: duplicate_key (got '2024-01-05, S0002, P01')",
        "date+store_id+product_id: duplicate_key (got '2024-01-05, S0003, P01')",
    ]


# --- landing files on disk: links, FIFOs, paths outside the folder, one read ----------------------


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    folder = tmp_path / "landing"
    folder.mkdir()
    return folder


def test_a_symlink_to_a_system_file_is_refused_without_reading_it(landing):
    (landing / "2024-01-05.csv").symlink_to("/etc/passwd")
    with pytest.raises(LandingFileError, match="symbolic link") as exc:
        read_landing_file(landing / "2024-01-05.csv", landing)
    assert "root:" not in str(exc.value) and "/etc/passwd" not in str(exc.value)


def test_a_symlink_to_a_csv_outside_the_folder_is_refused(landing, tmp_path):
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(HEADER + rows(3))
    (landing / "2024-01-05.csv").symlink_to(outside)
    with pytest.raises(LandingFileError, match="symbolic link"):
        read_landing_bytes(landing / "2024-01-05.csv", landing)


def test_a_fifo_a_folder_and_a_path_outside_the_folder_are_refused(landing, tmp_path):
    os.mkfifo(landing / "2024-01-05.csv")  # opening it for reading would block forever
    with pytest.raises(LandingFileError, match="not a regular file"):
        read_landing_bytes(landing / "2024-01-05.csv", landing)
    (landing / "2024-01-06.csv").mkdir()
    with pytest.raises(LandingFileError, match="is a folder"):
        read_landing_bytes(landing / "2024-01-06.csv", landing)
    (tmp_path / "2024-01-07.csv").write_text(HEADER + rows(3))
    with pytest.raises(LandingFileError, match="not a file inside the landing folder"):
        read_landing_bytes(landing / ".." / "2024-01-07.csv", landing)


def test_a_landing_folder_that_is_itself_a_link_still_works(landing, tmp_path):
    (landing / "2024-01-05.csv").write_text(HEADER + rows(3))
    (tmp_path / "linked").symlink_to(landing)
    frame = read_landing_file(tmp_path / "linked" / "2024-01-05.csv", tmp_path / "linked")
    assert len(frame) == 3


def materialize_ingest(root: Path, spec, partition: str, with_validated: bool = False):
    """`raw` (and `validated`) of one day, in process, with the real parquet IO manager."""
    import dagster as dg

    from ml_platform.assets.ingest import build_ingest_assets
    from ml_platform.resources.io_manager import ParquetIOManager
    from ml_platform.resources.keys import daily_partitions
    from ml_platform.resources.platform import PlatformPaths

    raw, validated, _ = build_ingest_assets(spec, daily_partitions(spec))
    resources = {
        "paths": PlatformPaths(root=str(root)),
        "parquet_io": ParquetIOManager(base_dir=str(root / "data")),
    }
    assets = [raw, validated] if with_validated else [raw]
    return dg.materialize(
        assets, partition_key=partition, resources=resources, raise_on_error=False
    )


def raw_landing(root: Path, spec) -> Path:
    folder = root / spec.landing.directory
    folder.mkdir(parents=True)
    return folder


def test_raw_hashes_exactly_the_bytes_it_parsed_even_if_the_file_is_replaced(
    tmp_path, spec, monkeypatch
):
    import ml_platform.assets.ingest as ingest

    path = raw_landing(tmp_path, spec) / "2024-01-05.csv"
    original = (HEADER + rows(3)).encode()
    path.write_bytes(original)
    real_encode = ingest.encode_frame

    def encode_then_replace(frame):  # another writer swaps the file between two reads
        path.write_bytes((HEADER + rows(7)).encode())
        return real_encode(frame)

    monkeypatch.setattr(ingest, "encode_frame", encode_then_replace)
    result = materialize_ingest(tmp_path, spec, "2024-01-05")
    assert result.success
    (event,) = result.get_asset_materialization_events()  # the one raw partition
    metadata = event.materialization.metadata
    assert metadata["md5"].value == hashlib.md5(original).hexdigest()
    assert metadata["dagster/row_count"].value == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: p.write_text("date,units_sold, units_sold\n2024-01-05,1,2\n"),
            "duplicate column names (after trimming spaces): 'units_sold'",
        ),
        (lambda p: p.symlink_to("/etc/passwd"), "is a symbolic link"),
    ],
    ids=["duplicate_header", "symlink"],
)
def test_raw_failures_name_the_cause_in_the_step_failure(tmp_path, spec, make, message):
    from ml_platform_tests.conftest import failure_messages

    make(raw_landing(tmp_path, spec) / "2024-01-05.csv")
    result = materialize_ingest(tmp_path, spec, "2024-01-05")
    assert not result.success
    text = failure_messages(result)
    assert "2024-01-05: " in text and message in text
    assert "root:" not in text


def test_an_unexpected_error_in_validated_names_its_cause(tmp_path, spec, monkeypatch):
    import ml_platform.assets.ingest as ingest
    from ml_platform_tests.conftest import failure_messages

    (raw_landing(tmp_path, spec) / "2024-01-05.csv").write_text(HEADER + rows(3))

    def broken(*args, **kwargs):
        raise RuntimeError("pandera exploded")

    monkeypatch.setattr(ingest, "validate_batch", broken)
    result = materialize_ingest(tmp_path, spec, "2024-01-05", with_validated=True)
    assert not result.success
    assert "2024-01-05: RuntimeError: pandera exploded" in failure_messages(result)


# --- property: the reader agrees with Python's csv module, or refuses clearly ---------------------

NAMES = [*HEADER.strip().split(","), "note", " price ", "", MALFORMED_COLUMN]
VALUE_ALPHABET = 'aS0159 ,"\n\r\t\x00\x1f\x7f\u00e9０-.'
VALUES = (
    st.integers(-(10**20), 10**20).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["2024-01-05", "S0001", "P01", "S０００１", "NA", "", " 3 "])
    | st.text(VALUE_ALPHABET, max_size=8)
)
GOOD_ROWS = st.integers(1, 30).map(lambda i: ["2024-01-05", f"S{i:04d}", "P01", str(i), "2.5", "0"])


@st.composite
def csv_bytes(draw, contract_header: bool = False) -> bytes:
    """CSV-ish bytes: a table written with csv quoting, fields joined without it, or noise.

    Headers are the contract's or random names; rows are valid ones (some repeated) or random
    values in random numbers, so that every path of the reader and the contract is reached.
    """
    kinds = ["written", "joined"] if contract_header else ["written", "joined", "noise"]
    kind = draw(st.sampled_from(kinds))
    if kind == "noise":
        return draw(st.binary(max_size=300))
    names = st.lists(st.sampled_from(NAMES) | st.text(VALUE_ALPHABET, max_size=6), min_size=1)
    header = NAMES[:6] if contract_header else draw(st.just(NAMES[:6]) | names)
    width = len(header)
    sizes = st.integers(0, width + 2) | st.just(width)
    random_rows = sizes.flatmap(lambda n: st.lists(VALUES, min_size=n, max_size=n))
    table = [header, *draw(st.lists(GOOD_ROWS | random_rows, max_size=8))]
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    if kind == "written":
        out = io.StringIO()
        quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
        csv.writer(out, quoting=quoting, lineterminator=end).writerows(table)
        text = out.getvalue()
    else:
        text = end.join(",".join(row) for row in table) + draw(st.sampled_from(["", end]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + text).encode()


def csv_module_reading(data: bytes) -> tuple[list[str], list[list[str]]] | None:
    """What Python's csv module reads: (header, non-blank rows), or None when it cannot."""
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    rows = [row for row in rows if row]
    return (rows[0], rows[1:]) if rows else None


@settings(max_examples=200, deadline=None, database=None)
@given(data=csv_bytes())
def test_reader_matches_the_csv_module_or_raises_a_landing_file_error(data):
    try:
        frame = read_landing_csv(data, "generated.csv")
    except LandingFileError:
        return  # refused with our own error: not UTF-8, bad quoting, bad header, empty
    reading = csv_module_reading(data)
    assert reading is not None, "read a file the csv module cannot read"
    header, body = reading
    names = [h.strip() or f"Unnamed: {i}" for i, h in enumerate(header)]
    assert list(frame.columns[: len(names)]) == names
    assert len(frame) == len(body)  # no line lost, none invented
    assert all(isinstance(v, str) for v in frame.to_numpy().ravel())
    notes = frame[MALFORMED_COLUMN] if MALFORMED_COLUMN in frame else pd.Series("", frame.index)
    well_formed = [row for row in body if len(row) == len(header)]
    assert frame.loc[notes == "", names].to_numpy().tolist() == well_formed
    saw = [int(n.split("saw ")[1].split(":")[0]) for n in notes[notes != ""]]
    assert saw == [len(row) for row in body if len(row) != len(header)]


@settings(max_examples=50, deadline=None, database=None)
@given(data=csv_bytes(contract_header=True))
def test_validation_quarantines_or_rejects_but_never_crashes_or_loses_rows(spec, data):
    try:
        result = validate_batch(read_landing_csv(data), lenient(spec), DAY)
    except ContractViolation:
        return
    assert len(result.valid) + len(result.quarantine) == result.n_rows
    assert all(isinstance(r, str) and r for r in result.quarantine[REASONS_COLUMN])
