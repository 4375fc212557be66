"""ParquetIOManager reads: a range with gaps, a required input with nothing stored, and an input
that may be missing (`allow_missing`)."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from ml_platform.core.storage import atomic_write, encode_frame
from ml_platform.resources.io_manager import ParquetIOManager

KEY = dg.AssetKey(["pipe", "predictions"])
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01")


def load(manager: ParquetIOManager, first: str, last: str, **metadata) -> pd.DataFrame:
    context = dg.build_input_context(
        asset_key=KEY,
        asset_partitions_def=DAILY,
        asset_partition_key_range=dg.PartitionKeyRange(first, last),
        definition_metadata=metadata,
    )
    return manager.load_input(context)


@pytest.fixture
def manager(tmp_path) -> ParquetIOManager:
    manager = ParquetIOManager(base_dir=str(tmp_path))
    for day, value in (("2024-01-02", 1.0), ("2024-01-04", 2.0)):
        frame = pd.DataFrame({"day": [day], "prediction": [value]})
        atomic_write(manager.path_for(KEY, day), encode_frame(frame).payload)
    return manager


def test_a_range_with_gaps_reads_what_is_stored(manager):
    frame = load(manager, "2024-01-01", "2024-01-05")
    assert frame["day"].tolist() == ["2024-01-02", "2024-01-04"]


@pytest.mark.parametrize(
    "first, last", [("2024-01-05", "2024-01-09"), ("2024-01-05", "2024-01-05")]
)
def test_a_required_input_with_nothing_stored_fails_with_the_asset_name(manager, first, last):
    with pytest.raises(dg.Failure, match=r"pipe/predictions .*materialise it first"):
        load(manager, first, last)


@pytest.mark.parametrize(
    "first, last", [("2024-01-05", "2024-01-09"), ("2024-01-05", "2024-01-05")]
)
def test_an_input_allowed_to_be_missing_reads_as_no_rows(manager, first, last):
    assert load(manager, first, last, allow_missing=True).empty


def test_allow_missing_still_reads_a_single_stored_partition(manager):
    frame = load(manager, "2024-01-04", "2024-01-04", allow_missing=True)
    assert frame["prediction"].tolist() == [2.0]
