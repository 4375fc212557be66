"""Data contracts: read a landing file as is, then split it into valid rows and quarantined rows.

Row-level problems (a bad value, a duplicate key) send the row to quarantine with its reasons.
Batch-level problems (a missing column, an empty batch, too many bad rows) reject the whole batch
with a `ContractViolation` whose message names the broken rule, so nothing downstream runs on it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ml_platform.specs import ColumnContract, ContractSpec

MALFORMED_COLUMN = "_malformed_line"
_INT_LIMIT = 2**53  # beyond this, float parsing has lost integer precision
REASONS_COLUMN = "_reasons"


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

    Lines with the wrong number of fields are kept (in `MALFORMED_COLUMN`) so that validation can
    quarantine them; nothing in the file is dropped silently.
    """
    if not data.strip():
        raise LandingFileError(f"{name} is empty (0 bytes of content): expected a CSV header")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LandingFileError(
            f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.ParserError:
        frame = _read_keeping_malformed_lines(text)
    except pd.errors.EmptyDataError as exc:
        raise LandingFileError(f"{name} has no CSV header") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_keeping_malformed_lines(text: str) -> pd.DataFrame:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    good = [r for r in body if len(r) == len(header)]
    bad = [r for r in body if len(r) != len(header) and r]
    frame = pd.DataFrame(good, columns=header, dtype=str)
    if bad:
        malformed = pd.DataFrame({c: [""] * len(bad) for c in header}, dtype=str)
        malformed[MALFORMED_COLUMN] = [
            f"expected {len(header)} fields, saw {len(r)}: {','.join(r)[:200]}" for r in bad
        ]
        frame[MALFORMED_COLUMN] = ""
        frame = pd.concat([frame, malformed], ignore_index=True)
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
    coerced, cases = _coerce(raw, contract)
    schema = build_schema(contract, partition_date)
    rows_ok = ~coerced.index.isin(cases["index"]) if len(cases) else np.ones(len(raw), bool)
    schema_cases = _schema_failure_cases(schema, coerced[rows_ok], contract.unique)
    cases = pd.concat([cases, schema_cases], ignore_index=True)

    table_level = cases[cases["index"].isna()]
    if len(table_level):
        raise ContractViolation(
            "contract broken for the whole batch: " + _describe(table_level), summarise(cases)
        )
    bad_index = pd.Index(cases["index"].astype(int).unique())
    fraction = len(bad_index) / len(raw)
    if fraction > contract.max_quarantine_fraction:
        raise ContractViolation(
            f"quarantine fraction {fraction:.1%} of {len(raw)} rows exceeds "
            f"max_quarantine_fraction {contract.max_quarantine_fraction:.1%}; failing rules: "
            + _describe(cases),
            summarise(cases),
        )
    reasons = cases.groupby("index")["reason"].agg("; ".join)
    quarantine = raw.loc[bad_index].copy()
    quarantine[REASONS_COLUMN] = reasons.reindex(bad_index.astype(float)).to_numpy()
    valid = coerced.drop(index=bad_index)[list(contract.columns)].reset_index(drop=True)
    return ValidationResult(valid, quarantine.reset_index(drop=True), summarise(cases), len(raw))


def build_schema(contract: ContractSpec, partition_date: date | None = None) -> pa.DataFrameSchema:
    """The pandera schema for coerced frames: value checks plus unique keys."""
    columns = {}
    for name, rule in contract.columns.items():
        checks = _checks(rule)
        if rule.dtype == "date" and partition_date is not None:
            expected = pd.Timestamp(partition_date)
            checks.append(
                pa.Check(lambda s, e=expected: s == e, element_wise=False, name="equals_partition")
            )
        columns[name] = pa.Column(_PANDAS_DTYPE[rule.dtype](rule), checks, nullable=rule.nullable)
    return pa.DataFrameSchema(
        columns,
        unique=contract.unique or None,
        report_duplicates="exclude_first",
        strict=False,
    )


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
        checks.append(pa.Check.str_matches(rule.pattern))
    return checks


def _coerce(raw: pd.DataFrame, contract: ContractSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse strings into contract dtypes, recording every value that does not parse."""
    out = pd.DataFrame(index=raw.index)
    cases = []
    malformed = pd.Series(False, index=raw.index)
    if MALFORMED_COLUMN in raw.columns:
        malformed = raw[MALFORMED_COLUMN].fillna("") != ""
        bad = raw.index[malformed]
        cases.append(
            _cases(bad, MALFORMED_COLUMN, "malformed_line", raw.loc[bad, MALFORMED_COLUMN])
        )
    for name, rule in contract.columns.items():
        text = raw[name].astype(str).str.strip()
        blank = (text.eq("") | text.str.lower().isin(["nan", "null", "none", "na"])) & ~malformed
        parsed = _parse(text, rule)
        unparsable = parsed.isna() & ~blank & ~malformed
        if not rule.nullable:
            cases.append(_cases(raw.index[blank], name, "not_nullable", text[blank]))
        cases.append(_cases(raw.index[unparsable], name, f"parse_{rule.dtype}", text[unparsable]))
        if rule.dtype == "int":
            overflow = parsed.abs() > _INT_LIMIT
            cases.append(_cases(raw.index[overflow], name, "int_overflow", text[overflow]))
            parsed = parsed.where(~overflow)
        out[name] = parsed
    fails = pd.concat(cases, ignore_index=True) if cases else _cases(pd.Index([]), "", "", [])
    clean_index = ~out.index.isin(fails["index"])
    for name, rule in contract.columns.items():
        if rule.dtype == "int" and not rule.nullable:
            out[name] = out[name].where(clean_index, 0).astype("int64")
        elif rule.dtype == "int":  # pandas' nullable integer: blanks stay missing, not float
            out[name] = out[name].round().astype("Int64")
    return out, fails


def _parse(text: pd.Series, rule: ColumnContract) -> pd.Series:
    if rule.dtype == "str":
        return text.where(text != "")
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
            "reason": [f"{column}: {check} (got {str(v)[:60]!r})" for v in values],
        }
    )


def _schema_failure_cases(
    schema: pa.DataFrameSchema, frame: pd.DataFrame, unique: list[str]
) -> pd.DataFrame:
    if frame.empty:
        return _cases(pd.Index([]), "", "", [])
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        fc = exc.failure_cases
        index = pd.to_numeric(fc["index"], errors="coerce")
        column = fc["column"].fillna(fc.get("schema_context", "")).astype(str)
        check = fc["check"].astype(str)
        duplicate_key = check.eq("multiple_fields_uniqueness")
        column = column.where(~duplicate_key, "+".join(unique))
        check = check.where(~duplicate_key, "duplicate_key")
        found = pd.DataFrame(
            {
                "index": index.astype("float64"),
                "column": column,
                "check": check,
                "failure_case": fc["failure_case"],
                "reason": [
                    f"{c}: {k} (got {str(v)[:60]!r})"
                    for c, k, v in zip(column, check, fc["failure_case"], strict=True)
                ],
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
        .agg(failures=("reason", "size"), example=("failure_case", "first"))
        .reset_index()
        .sort_values("failures", ascending=False, kind="stable")
        .assign(example=lambda f: f["example"].astype(str).str.slice(0, 60))
        .reset_index(drop=True)
    )


def _describe(cases: pd.DataFrame, top: int = 5) -> str:
    summary = summarise(cases).head(top)
    return "; ".join(
        f"{r.column} failed {r.check} ({r.failures} rows, e.g. {r.example!r})"
        for r in summary.itertuples()
    )


def read_landing_file(path: Path) -> pd.DataFrame:
    """Read a landing file from disk; a missing file is a clear `LandingFileError`."""
    if not path.is_file():
        raise LandingFileError(f"no landing file at {path}")
    return read_landing_csv(path.read_bytes(), path.name)
