"""core.storage: reading a range of partitions in one pass gives exactly the concatenated frame,
and handing freed memory back is safe to call at any time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml_platform.core.storage import (
    atomic_write,
    encode_frame,
    read_frame,
    read_frames,
    release_freed_memory,
)


def day(n: int, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "store_id": [f"S{i:04d}" for i in range(rows)],
            "date": pd.Timestamp("2025-01-01") + pd.Timedelta(days=n),
            "units_sold": rng.integers(0, 100, rows),
            "price": rng.uniform(1, 10, rows),
        }
    )


def write(tmp_path, frames: list[pd.DataFrame]) -> list:
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i}.parquet")
        atomic_write(paths[-1], encode_frame(frame).payload)
    return paths


def test_read_frames_equals_concatenating_each_file(tmp_path):
    paths = write(tmp_path, [day(n, 50, n) for n in range(5)])
    expected = pd.concat([read_frame(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(read_frames(paths), expected)


def test_read_frames_unifies_types_as_concat_does(tmp_path):
    gappy = day(1, 5, 1)
    gappy["units_sold"] = gappy["units_sold"].astype("float64")
    gappy.loc[2, "units_sold"] = np.nan  # an int column that is float where a value is missing
    frames = [day(0, 5, 0), day(0, 5, 0).iloc[0:0], gappy, day(2, 5, 2)]  # and an empty day
    paths = write(tmp_path, frames)
    expected = pd.concat([read_frame(p) for p in paths], ignore_index=True)
    result = read_frames(paths)
    pd.testing.assert_frame_equal(result, expected)
    assert result["units_sold"].isna().sum() == 1


def test_read_frames_shares_equal_strings(tmp_path):
    paths = write(tmp_path, [day(n, 20, n) for n in range(3)])
    ids = read_frames(paths)["store_id"]
    assert ids.iloc[0] is ids.iloc[20]  # one object per distinct id, not one per row


def test_read_frames_needs_a_file():
    with pytest.raises(ValueError, match="at least one file"):
        read_frames([])


def test_release_freed_memory_leaves_live_frames_intact(tmp_path):
    paths = write(tmp_path, [day(n, 2000, n) for n in range(3)])
    frame = read_frames(paths)
    before = frame.copy()
    release_freed_memory()
    release_freed_memory()
    pd.testing.assert_frame_equal(frame, before)


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_replaces_or_refuses_and_leaves_no_temp_file(tmp_path, fsync):
    path = tmp_path / "sub" / "2025-01-01.csv"
    atomic_write(path, b"first", fsync=fsync)
    atomic_write(path, b"second", fsync=fsync)
    assert path.read_bytes() == b"second"
    with pytest.raises(FileExistsError):
        atomic_write(path, b"third", overwrite=False, fsync=fsync)
    assert path.read_bytes() == b"second"
    atomic_write(tmp_path / "sub" / "new.csv", b"new", overwrite=False, fsync=fsync)
    assert sorted(p.name for p in path.parent.iterdir()) == ["2025-01-01.csv", "new.csv"]
