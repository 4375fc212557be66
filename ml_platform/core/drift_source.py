"""A parquet file as a drift window, read one column at a time with pyarrow.

Drift statistics need one column of each window at a time, so reading both files whole into
pandas (object strings and all) would cost most of the time and memory of a comparison. Numeric
columns arrive as float64 arrays; categorical columns are counted by Arrow, never turned into
Python strings row by row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ml_platform.core.drift import DriftInputError, FrameSource, infer_column_kinds

_HEAD_ROWS = 200  # enough rows for the date-string test in `infer_column_kinds`


class ParquetSource:
    """A `ColumnSource` over a parquet file; opening it reads only the footer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        schema = pq.read_schema(path)  # raises ArrowInvalid (a ValueError) if not parquet
        text = [f.name for f in schema if pa.types.is_string(f.type)]
        # Text columns arrive dictionary-encoded: counting codes is far cheaper than strings.
        self.file = pq.ParquetFile(path, read_dictionary=text)
        self.n_rows = self.file.metadata.num_rows
        self.names = [n for n in schema.names if not n.startswith("__index")]
        self.schema = schema  # as written: text stays text for the kind inference

    def _column(self, name: str) -> pa.ChunkedArray:
        table = self.file.read(columns=[name], use_pandas_metadata=False)
        return table.unify_dictionaries().column(0)  # one dictionary across row groups

    def infer_kinds(self) -> dict[str, str]:
        """Pandas' dtypes from the schema, plus the first rows of text columns (which may hold
        dates), so the kinds match a frame read with pandas without reading the file."""
        empty = self.schema.empty_table().to_pandas()
        kinds: dict[str, str] = {}
        for name in self.names:
            head = empty[[name]]
            if head[name].dtype == object and self.n_rows:
                values = self._column(name).slice(0, _HEAD_ROWS).to_pandas()
                head = pd.DataFrame({name: values.to_numpy()})
            kinds.update(infer_column_kinds(head))
        return kinds

    def all_missing(self, name: str) -> bool:
        return bool(self._column(name).to_pandas().isna().all())  # NaN counts, as in pandas

    def numeric(self, name: str, window: str) -> np.ndarray:
        column = self._column(name)
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            series = column.to_pandas().rename(name)
            return FrameSource(series.to_frame()).numeric(name, window)
        values = pc.cast(column, pa.float64(), safe=False)
        if values.null_count:
            values = pc.fill_null(values, np.nan)
        return values.to_numpy()

    def counts(self, name: str) -> pd.Series:
        column = self._column(name)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            series = column.to_pandas()
            try:
                return series.value_counts(dropna=True, sort=True)
            except TypeError as exc:  # lists, dicts: nothing hashable to count
                raise DriftInputError(
                    f"column {name!r} in {self.path} holds {kind} values, which cannot be "
                    "compared as categories"
                ) from exc
        counted = pc.value_counts(column.drop_null())
        values = counted.field("values")
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        values = values.to_numpy(zero_copy_only=False)
        totals = counted.field("counts").to_numpy()
        return pd.Series(totals, index=values).sort_values(ascending=False, kind="stable")
