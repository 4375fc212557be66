"""`ml-platform drift REFERENCE CURRENT`: the drift core on any two CSV or parquet files.

Exit codes make it scriptable: 0 no dataset drift, 1 dataset drift, 2 bad input. Bad input gets a
one-line message on stderr, never a traceback, because the caller is usually a shell script or CI.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ml_platform.core.drift import (
    CATEGORICAL,
    NUMERIC,
    ColumnSource,
    DriftInputError,
    DriftReport,
    DriftThresholds,
    FrameSource,
    compute_drift,
)
from ml_platform.core.drift_render import FORMATS, render

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_BAD_INPUT = 0, 1, 2
_CONTRACT_KINDS = {"str": CATEGORICAL, "int": NUMERIC, "float": NUMERIC}  # dates are skipped


class _UsageError(Exception):
    """argparse's complaint, re-raised so the CLI can print one line and return 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def drift_command(argv: list[str] | None = None) -> int:
    """Run the drift comparison; returns the exit code instead of exiting, so callers compose."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"ml-platform drift: error: {exc} (see --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        report = _run(args)
    except (ValueError, OSError) as exc:  # DriftInputError and Arrow's errors are ValueErrors
        print(f"ml-platform drift: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        print(render(report, args.format))
    except BrokenPipeError:  # `... | head` closed stdout; the exit code still tells the story
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (Python's documented recipe)
    return EXIT_DRIFT if report.dataset_drift else EXIT_NO_DRIFT


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ml-platform drift",
        description="Compare CURRENT with REFERENCE column by column (CSV or parquet). "
        "Exit 0: no dataset drift, 1: dataset drift, 2: bad input.",
    )
    parser.add_argument("reference", type=Path, help="reference window (.csv or .parquet)")
    parser.add_argument("current", type=Path, help="current window (.csv or .parquet)")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--threshold-psi", type=float, metavar="X")
    parser.add_argument("--threshold-wasserstein", type=float, metavar="X")
    parser.add_argument("--threshold-js", type=float, metavar="X")
    parser.add_argument("--drift-share", type=float, metavar="X")
    parser.add_argument("--columns", metavar="A,B", help="compare only these columns")
    parser.add_argument(
        "--spec", type=Path, metavar="PATH", help="pipeline spec: column kinds and thresholds"
    )
    return parser


def _run(args: argparse.Namespace) -> DriftReport:
    thresholds, kinds = DriftThresholds(), None
    if args.spec is not None:
        thresholds, kinds = _from_spec(args.spec)
    overrides = {
        "psi": args.threshold_psi,
        "wasserstein": args.threshold_wasserstein,
        "js": args.threshold_js,
        "drift_share": args.drift_share,
    }
    thresholds = replace(thresholds, **{k: v for k, v in overrides.items() if v is not None})
    reference, current = _read_table(args.reference), _read_table(args.current)
    if args.columns:
        wanted = [c.strip() for c in args.columns.split(",") if c.strip()]
        if not wanted:
            raise DriftInputError("--columns lists no column names")
        inferred = reference.infer_kinds()
        kinds = {c: (kinds or {}).get(c) or inferred.get(c, CATEGORICAL) for c in wanted}
    elif kinds is not None:
        present = {*reference.names, *current.names}
        kinds = {c: k for c, k in kinds.items() if c in present}
        if not kinds:
            raise DriftInputError(f"none of the spec's columns are in {args.reference}")
    return compute_drift(reference, current, columns=kinds, thresholds=thresholds)


def _from_spec(path: Path) -> tuple[DriftThresholds, dict[str, str]]:
    from ml_platform.specs import load_spec  # pydantic and yaml only when a spec is given

    spec = load_spec(path)
    drift = spec.drift
    thresholds = DriftThresholds(
        psi=drift.psi_threshold,
        wasserstein=drift.wasserstein_threshold,
        js=drift.js_threshold,
        drift_share=drift.drift_share,
    )
    kinds = {
        name: _CONTRACT_KINDS[column.dtype]
        for name, column in spec.contract.columns.items()
        if column.dtype in _CONTRACT_KINDS
    }
    return thresholds, kinds


def _read_table(path: Path) -> ColumnSource:
    """A parquet file stays on disk and is read column by column; a CSV is parsed whole."""
    if not path.exists():
        raise DriftInputError(f"{path}: no such file")
    if not path.is_file():
        raise DriftInputError(f"{path}: not a file")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            from ml_platform.core.drift_source import ParquetSource

            return ParquetSource(path)
        if ".csv" in suffixes[-2:]:
            import pandas as pd

            try:
                return FrameSource(pd.read_csv(path, low_memory=False))
            except pd.errors.EmptyDataError as exc:
                raise DriftInputError(f"{path}: the file is empty") from exc
    except DriftInputError:
        raise
    except (ValueError, OSError) as exc:  # ParserError, ArrowInvalid, UnicodeDecodeError
        raise DriftInputError(f"{path}: cannot read it ({_one_line(exc)})") from exc
    raise DriftInputError(f"{path}: unsupported file type; use .csv or .parquet")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


if __name__ == "__main__":
    sys.exit(drift_command())
