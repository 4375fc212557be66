"""Data contracts: read a landing file as is, then split it into valid rows and quarantined rows.

Row-level problems (a bad value, a duplicate key) send the row to quarantine with its reasons.
Batch-level problems (a missing column, an empty batch, too many bad rows) reject the whole batch
with a `ContractViolation` whose message names the broken rule, so nothing downstream runs on it.
"""

from __future__ import annotations

import csv
import errno
import gc
import io
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ml_platform.specs import ColumnContract, ContractSpec

MALFORMED_COLUMN = "_malformed_line"
_INT_LIMIT = 2**53  # beyond this, float parsing has lost integer precision
REASONS_COLUMN = "_reasons"
# C0 controls other than tab, newline and carriage return (which CSV quoting may carry), DEL and
# the C1 controls. Python's `str.strip` removes some of them (\x1c-\x1f), and pandas' C parser
# ends a value at NUL, so they are looked for in the raw text, before anything is stripped.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ContractViolation(ValueError):
    """The batch as a whole breaks the contract; `failure_cases` says where."""

    def __init__(self, message: str, failure_cases: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.failure_cases = failure_cases if failure_cases is not None else pd.DataFrame()


class LandingFileError(ContractViolation):
    """The landing file cannot be read as a CSV table at all."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    failure_summary: pd.DataFrame
    n_rows: int

    @property
    def quarantine_fraction(self) -> float:
        return len(self.quarantine) / self.n_rows if self.n_rows else 0.0


def read_landing_csv(data: bytes, name: str = "landing file") -> pd.DataFrame:
    """Parse CSV bytes into string columns without interpreting any value.

    Python's `csv` module reads the text (strict quoting), never pandas: pandas turns surplus
    fields into an index and ends a value at a NUL byte. Every value is kept exactly as written.
    Lines with the wrong number of fields are kept, blanked, with the reason in
    `MALFORMED_COLUMN` so that validation quarantines them; blank lines carry nothing and are
    skipped; nothing else in the file is dropped. A file that cannot be read as a table (not
    UTF-8, an unclosed quote, a bad or duplicated header) is a `LandingFileError`.
    """
    if not data.strip():
        raise LandingFileError(f"{name} is empty (0 bytes of content): expected a CSV header")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LandingFileError(
            f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    with _gc_paused():
        rows = _csv_rows(text, name)
        start = next((i for i, row in enumerate(rows) if row), None)
        if start is None:
            raise LandingFileError(f"{name} has no CSV header")
        header = _header(rows[start], name)
        body = [row for row in rows[start + 1 :] if row]
        del rows
        return _frame(header, body)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building a million small lists sets off the cyclic GC again and again (3x slower)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _csv_rows(text: str, name: str) -> list[list[str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        return list(reader)
    except csv.Error as exc:
        hint = " (a quote that is never closed?)" if "end of data" in str(exc) else ""
        raise LandingFileError(
            f"{name} is not valid CSV at line {reader.line_num}: {exc}{hint}"
        ) from exc


def _header(cells: list[str], name: str) -> list[str]:
    """Column names, trimmed; an empty name becomes `Unnamed: i` (as pandas names it)."""
    for i, cell in enumerate(cells, start=1):
        if _CONTROL_CHARACTERS.search(cell):
            raise LandingFileError(
                f"{name}: header column {i} contains a control character ({cell[:60]!r})"
            )
    names = [cell.strip() or f"Unnamed: {i}" for i, cell in enumerate(cells)]
    duplicated = [n for n, count in Counter(names).items() if count > 1]
    if duplicated:
        where = "; ".join(
            f"{n!r} at columns "
            + ", ".join(f"{i} ({cells[i - 1]!r})" for i, m in enumerate(names, 1) if m == n)
            for n in duplicated
        )
        raise LandingFileError(
            f"{name} has duplicate column names (after trimming spaces): {where}; "
            "each column must appear once in the header"
        )
    reserved = [n for n in names if n in (MALFORMED_COLUMN, REASONS_COLUMN)]
    if reserved:
        raise LandingFileError(f"{name} uses reserved column names {reserved} in its header")
    return names


def _frame(header: list[str], body: list[list[str]]) -> pd.DataFrame:
    width = len(header)
    malformed = [i for i, row in enumerate(body) if len(row) != width]
    notes = [""] * len(body) if malformed else None
    for i in malformed:
        row = body[i]
        notes[i] = f"expected {width} fields, saw {len(row)}: {','.join(row)[:200]}"
        body[i] = [""] * width
    frame = pd.DataFrame(body, columns=header, dtype=object)
    if notes is not None:
        frame[MALFORMED_COLUMN] = notes
    return frame


def validate_batch(
    raw: pd.DataFrame, contract: ContractSpec, partition_date: date | None = None
) -> ValidationResult:
    """Coerce and check one batch; bad rows go to quarantine, a broken batch raises."""
    missing = [c for c in contract.columns if c not in raw.columns]
    if missing:
        found = [c for c in raw.columns if c != MALFORMED_COLUMN]
        raise ContractViolation(
            f"missing required columns {missing} (found {found}): the file does not match the "
            "contract's columns; was a column renamed or dropped?"
        )
    if raw.empty:
        raise ContractViolation("batch has no rows (header only): nothing to validate")

    raw = raw.reset_index(drop=True)
    _reject_if_every_line_malformed(raw)
    coerced, cases = _coerce(raw, contract)
    schema = build_schema(contract, partition_date)
    rows_ok = ~coerced.index.isin(cases["index"]) if len(cases) else np.ones(len(raw), bool)
    key_cases = _duplicate_key_cases(coerced[rows_ok], raw, contract.unique)
    # A repeated key is quarantined for that alone: its value checks are its first row's.
    checked = rows_ok & ~coerced.index.isin(key_cases["index"])
    schema_cases = _schema_failure_cases(schema, coerced[checked])
    cases = pd.concat([cases, key_cases, schema_cases], ignore_index=True)

    summary = summarise(cases)
    table_level = cases[cases["index"].isna()]
    if len(table_level):
        raise ContractViolation(
            "contract broken for the whole batch: " + _describe(summarise(table_level)), summary
        )
    bad_index = pd.Index(cases["index"].astype(int).unique())
    fraction = len(bad_index) / len(raw)
    if fraction > contract.max_quarantine_fraction:
        raise ContractViolation(
            f"quarantine fraction {fraction:.1%} of {len(raw)} rows exceeds "
            f"max_quarantine_fraction {contract.max_quarantine_fraction:.1%}; failing rules: "
            + _describe(summary),
            summary,
        )
    reasons = cases.assign(reason=_reasons(cases)).groupby("index")["reason"].agg("; ".join)
    quarantine = raw.loc[bad_index].copy()
    quarantine[REASONS_COLUMN] = reasons.reindex(bad_index.astype(float)).to_numpy()
    valid = coerced.drop(index=bad_index)[list(contract.columns)].reset_index(drop=True)
    return ValidationResult(valid, quarantine.reset_index(drop=True), summary, len(raw))


def build_schema(contract: ContractSpec, partition_date: date | None = None) -> pa.DataFrameSchema:
    """The pandera schema for coerced frames: the value checks.

    Unique keys are not in it: `validate_batch` finds duplicates with pandas (`duplicated`), as
    pandera's uniqueness failure cases take minutes and gigabytes for a million duplicates.
    """
    columns = {}
    for name, rule in contract.columns.items():
        checks = _checks(rule)
        if rule.dtype == "date" and partition_date is not None:
            expected = pd.Timestamp(partition_date)
            checks.append(
                pa.Check(lambda s, e=expected: s == e, element_wise=False, name="equals_partition")
            )
        columns[name] = pa.Column(_PANDAS_DTYPE[rule.dtype](rule), checks, nullable=rule.nullable)
    return pa.DataFrameSchema(columns, strict=False)


_PANDAS_DTYPE = {
    "str": lambda r: object,
    "int": lambda r: "Int64" if r.nullable else "int64",
    "float": lambda r: "float64",
    "date": lambda r: "datetime64[ns]",
}


def _checks(rule: ColumnContract) -> list[pa.Check]:
    checks = []
    for attr, factory in (
        ("ge", pa.Check.ge),
        ("gt", pa.Check.gt),
        ("le", pa.Check.le),
        ("lt", pa.Check.lt),
    ):
        value = getattr(rule, attr)
        if value is not None:
            checks.append(factory(value))
    if rule.isin is not None:
        checks.append(pa.Check.isin(rule.isin))
    if rule.pattern is not None:
        # ASCII semantics: `\d` is [0-9] and `\w` is [A-Za-z0-9_], so full-width or other
        # Unicode digits (S０００１) do not pass for S0001. The error text keeps the spec's pattern.
        ascii_pattern = re.compile(rule.pattern, re.ASCII)
        checks.append(pa.Check.str_matches(ascii_pattern, error=f"str_matches('{rule.pattern}')"))
    return checks


def _coerce(raw: pd.DataFrame, contract: ContractSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse strings into contract dtypes, recording every value that does not parse.

    Each column's distinct values are looked at once and the results spread back over the rows:
    a day's file repeats its date, stores and prices, and a million duplicated rows hold six
    distinct values, so string methods run on a handful of values, not millions.
    """
    out = pd.DataFrame(index=raw.index)
    cases = []
    malformed = pd.Series(False, index=raw.index)
    if MALFORMED_COLUMN in raw.columns:
        malformed = raw[MALFORMED_COLUMN].fillna("") != ""
        bad = raw.index[malformed]
        cases.append(
            _cases(bad, MALFORMED_COLUMN, "malformed_line", raw.loc[bad, MALFORMED_COLUMN])
        )
    for name in raw.columns.drop(MALFORMED_COLUMN, errors="ignore"):
        codes, distinct = pd.factorize(raw[name].astype(str))
        distinct = pd.Series(distinct, dtype=object)

        def spread(values: pd.Series, codes: np.ndarray = codes) -> pd.Series:
            return pd.Series(values.to_numpy()[codes], index=raw.index)

        control = spread(distinct.map(lambda v: _CONTROL_CHARACTERS.search(v) is not None))
        if control.any():  # looked for before stripping: strip() removes \x1c-\x1f
            cases.append(_cases(raw.index[control], name, "control_character", raw[name][control]))
        rule = contract.columns.get(name)
        if rule is None:
            continue
        text = distinct.str.strip()
        blank = spread(_is_blank(text)) & ~malformed
        parsed = spread(_parse(text, rule))
        text = spread(text)
        unparsable = parsed.isna() & ~blank & ~malformed
        if not rule.nullable:
            cases.append(_cases(raw.index[blank], name, "not_nullable", text[blank]))
        cases.append(_cases(raw.index[unparsable], name, f"parse_{rule.dtype}", text[unparsable]))
        if rule.dtype == "int":
            overflow = parsed.abs() > _INT_LIMIT
            cases.append(_cases(raw.index[overflow], name, "int_overflow", text[overflow]))
            parsed = parsed.where(~overflow)
        out[name] = parsed
    out = out[list(contract.columns)]
    fails = pd.concat(cases, ignore_index=True) if cases else _cases(pd.Index([]), "", "", [])
    clean_index = ~out.index.isin(fails["index"])
    for name, rule in contract.columns.items():
        if rule.dtype == "int" and not rule.nullable:
            out[name] = out[name].where(clean_index, 0).astype("int64")
        elif rule.dtype == "int":  # pandas' nullable integer: blanks stay missing, not float
            out[name] = out[name].round().astype("Int64")
    return out, fails


def _is_blank(text: pd.Series) -> pd.Series:
    return text.eq("") | text.str.lower().isin(["nan", "null", "none", "na"])


def _parse(text: pd.Series, rule: ColumnContract) -> pd.Series:
    if rule.dtype == "str":
        return text.where(text != "")
    if not "".join(text).isascii():  # pandas and strptime read full-width digits as digits
        text = text.where(text.map(str.isascii))
    if rule.dtype == "date":
        return pd.to_datetime(text, format=rule.format or "%Y-%m-%d", errors="coerce")
    numbers = pd.to_numeric(text, errors="coerce")
    numbers = numbers.where(np.isfinite(numbers))
    if rule.dtype == "int":
        return numbers.where(numbers == np.round(numbers))
    return numbers.astype("float64")


def _cases(index: pd.Index, column: str, check: str, values: object) -> pd.DataFrame:
    values = list(values) if not isinstance(values, list) else values
    return pd.DataFrame(
        {
            "index": pd.Series(index, dtype="float64"),
            "column": column,
            "check": check,
            "failure_case": pd.Series(values, dtype=object),
        }
    )


def _reasons(cases: pd.DataFrame) -> list[str]:
    """`<column>: <check> (got <value>)` per failure; made only for an accepted batch's rows."""
    return [
        f"{c}: {k} (got {str(v)[:60]!r})"
        for c, k, v in zip(cases["column"], cases["check"], cases["failure_case"], strict=True)
    ]


def _reject_if_every_line_malformed(raw: pd.DataFrame) -> None:
    """No row has the header's number of fields: the header or the delimiter is wrong."""
    if MALFORMED_COLUMN not in raw.columns:
        return
    notes = raw[MALFORMED_COLUMN].fillna("")
    if (notes != "").all():
        width = len(raw.columns) - 1
        raise ContractViolation(
            f"every row ({len(raw)}) has a different number of fields than the header "
            f"({width} fields), e.g. {notes.iloc[0][:120]!r}: is the header, the delimiter or "
            "a trailing comma wrong?",
            _cases(raw.index, MALFORMED_COLUMN, "malformed_line", notes).pipe(summarise),
        )


def _duplicate_key_cases(frame: pd.DataFrame, raw: pd.DataFrame, unique: list[str]) -> pd.DataFrame:
    """Every repeat of a key after its first row, with the key as written (trimmed)."""
    if not unique or frame.empty:
        return _cases(pd.Index([]), "", "", [])
    # Keys numbered in order of first appearance: a repeat is a number seen before, and the row
    # where number g first appears is the g-th row that is not a repeat.
    key_id = frame.groupby(unique, sort=False, dropna=False).ngroup().to_numpy()
    repeat = pd.Series(key_id).duplicated().to_numpy()
    if not repeat.any():
        return _cases(pd.Index([]), "", "", [])
    repeated_ids = np.unique(key_id[repeat])
    first_rows = frame.index[~repeat][repeated_ids]
    shown = raw.loc[first_rows, unique].astype(str).apply(lambda c: c.str.strip())
    as_written = pd.Series(shown.agg(", ".join, axis=1).to_numpy(), index=repeated_ids)
    key = as_written.reindex(key_id[repeat]).to_numpy()
    return _cases(frame.index[repeat], "+".join(unique), "duplicate_key", key)


def _schema_failure_cases(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return _cases(pd.Index([]), "", "", [])
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        fc = exc.failure_cases
        index = pd.to_numeric(fc["index"], errors="coerce")
        column = fc["column"].fillna(fc.get("schema_context", "")).astype(str)
        check = fc["check"].astype(str)
        found = pd.DataFrame(
            {
                "index": index.astype("float64"),
                "column": column,
                "check": check,
                "failure_case": fc["failure_case"],
            }
        )
        return found.drop_duplicates(subset=["index", "column", "check"], ignore_index=True)
    return _cases(pd.Index([]), "", "", [])


def summarise(cases: pd.DataFrame) -> pd.DataFrame:
    """One row per (column, check): how many rows failed it and an example value."""
    if cases.empty:
        return pd.DataFrame(columns=["column", "check", "failures", "example"])
    return (
        cases.groupby(["column", "check"], sort=False)
        .agg(failures=("check", "size"), example=("failure_case", "first"))
        .reset_index()
        .sort_values("failures", ascending=False, kind="stable")
        .assign(example=lambda f: f["example"].astype(str).str.slice(0, 60))
        .reset_index(drop=True)
    )


def _describe(summary: pd.DataFrame, top: int = 5) -> str:
    return "; ".join(
        f"{r.column} failed {r.check} ({r.failures} rows, e.g. {r.example!r})"
        for r in summary.head(top).itertuples()
    )


def open_landing_file(path: Path, directory: Path | None = None) -> BinaryIO:
    """Open a landing file for reading if it is a regular file directly inside `directory`.

    A symbolic link is refused, never followed (also when it appears between the check and the
    open: `O_NOFOLLOW`), and so are FIFOs, devices and folders (`O_NONBLOCK` keeps a FIFO from
    blocking the open). Errors name the file and the problem, never a link's target or contents.
    """
    directory = path.parent if directory is None else directory
    if os.path.realpath(path.parent) != os.path.realpath(directory) or path.name in ("", "..", "."):
        raise LandingFileError(f"{path} is not a file inside the landing folder {directory}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise LandingFileError(f"no landing file at {path}") from None
    except OSError as exc:
        raise LandingFileError(f"cannot read landing file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise LandingFileError(_not_regular(path, mode))
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LandingFileError(f"no landing file at {path}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # the link appeared after the lstat
            raise LandingFileError(_not_regular(path, stat.S_IFLNK)) from None
        raise LandingFileError(f"cannot read landing file {path}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise LandingFileError(_not_regular(path, mode))
    return os.fdopen(fd, "rb")


def _not_regular(path: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        return (
            f"landing file {path} is a symbolic link: links are not followed; copy the file into "
            "the landing folder instead"
        )
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
    return f"landing file {path} is {kind}"


def read_landing_bytes(path: Path, directory: Path | None = None) -> bytes:
    """The bytes of a landing file, read once (hash and parse these same bytes)."""
    with open_landing_file(path, directory) as handle:
        return handle.read()


def read_landing_file(path: Path, directory: Path | None = None) -> pd.DataFrame:
    """Read and parse a landing file; a missing, linked or unreadable file is refused clearly."""
    return read_landing_csv(read_landing_bytes(path, directory), path.name)
