"""Data products under a root given by URL (`ML_PLATFORM_DATA_ROOT`), through fsspec/UPath.

`file://` takes fsspec's local filesystem (and keeps temp file + rename), `memory://` the generic
object-store branch (one PUT per file), so both code paths that `s3://` would use run here.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import dagster as dg
import fsspec
import pandas as pd
import pytest

from ml_platform.core.storage import atomic_write, data_path, encode_frame, is_url_path
from ml_platform.resources.io_manager import ParquetIOManager

KEY = dg.AssetKey(["pipe", "predictions"])
DAILY = dg.DailyPartitionsDefinition(start_date="2024-01-01")


@pytest.fixture(params=["file", "memory"])
def url_root(request, tmp_path: Path):
    """A data root URL of each kind; the memory one has its own prefix and is removed after."""
    if request.param == "file":
        yield f"file://{tmp_path / 'bucket'}"
        return
    prefix = f"mlp_test_{uuid.uuid4().hex[:10]}"
    try:
        yield f"memory://{prefix}"
    finally:
        memory = fsspec.filesystem("memory")
        if memory.exists(prefix):
            memory.rm(prefix, recursive=True)


def frame_for(day: str, value: float) -> pd.DataFrame:
    return pd.DataFrame({"day": [day], "prediction": [value]})


def load(manager: ParquetIOManager, first: str, last: str, **metadata):
    context = dg.build_input_context(
        asset_key=KEY,
        asset_partitions_def=DAILY,
        asset_partition_key_range=dg.PartitionKeyRange(first, last),
        definition_metadata=metadata,
    )
    return manager.load_input(context)


def test_a_plain_folder_stays_on_pathlib_and_a_url_goes_through_fsspec(tmp_path, url_root):
    assert not is_url_path(data_path(str(tmp_path)))
    assert type(data_path(str(tmp_path))) is type(tmp_path)  # the fast path is unchanged
    assert is_url_path(data_path(url_root))
    with pytest.raises(ValueError, match=r"nosuchfs://bucket.*cannot be opened through fsspec"):
        data_path("nosuchfs://bucket/prefix")


def test_the_io_manager_writes_and_reads_under_a_url_root(url_root):
    manager = ParquetIOManager(base_dir=url_root)
    encoded = {
        d: encode_frame(frame_for(d, v)) for d, v in (("2024-01-02", 1.0), ("2024-01-04", 2))
    }
    context = dg.build_output_context(asset_key=KEY)
    manager.handle_output(context, encoded)

    for day, frame in encoded.items():
        path = manager.path_for(KEY, day)
        assert is_url_path(path) and str(path).startswith(url_root)
        assert path.read_bytes() == frame.payload  # exactly the bytes whose md5 was reported
    listing = sorted(p.name for p in manager.path_for(KEY, "x").parent.iterdir())
    assert listing == ["2024-01-02.parquet", "2024-01-04.parquet"]  # no temp file left behind

    assert load(manager, "2024-01-01", "2024-01-05")["day"].tolist() == [
        "2024-01-02",
        "2024-01-04",
    ]
    assert load(manager, "2024-01-04", "2024-01-04")["prediction"].tolist() == [2.0]
    by_partition = load(manager, "2024-01-02", "2024-01-02", by_partition=True)
    assert by_partition["2024-01-02"]["prediction"].tolist() == [1.0]
    assert load(manager, "2024-01-05", "2024-01-09", allow_missing=True).empty
    with pytest.raises(dg.Failure, match=r"pipe/predictions .*materialise it first"):
        load(manager, "2024-01-05", "2024-01-09")


def test_atomic_write_under_a_url_replaces_or_refuses(url_root):
    target = data_path(url_root) / "landing" / "2024-01-01.csv"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(FileExistsError):
        atomic_write(target, b"third", overwrite=False)
    assert target.read_bytes() == b"second"


@pytest.mark.slow
def test_an_ingest_under_a_file_url_writes_the_same_bytes_as_a_local_root(
    isolated_env, spec, monkeypatch, tmp_path
):
    """The whole ingest graph, once with the default root and once with a `file://` root, in two
    project roots: every partition's md5 is the same and nothing lands in the project's data/."""
    from ml_platform.demo import materialize
    from ml_platform_tests.conftest import activated, generate, make_platform_root

    stages = ["raw", "validated", "quarantine", "features"]
    local = isolated_env
    generate(local, spec, stores=3, days=8, seed=5)
    assert materialize(local, spec, stages)
    expected = _md5s(local / "data")

    remote = make_platform_root(tmp_path / "remote_project")
    generate(remote, spec, stores=3, days=8, seed=5)
    bucket = tmp_path / "bucket"
    monkeypatch.setenv("ML_PLATFORM_DATA_ROOT", f"file://{bucket}")
    with activated(remote):
        assert materialize(remote, spec, stages)
    assert not (remote / "data").exists() or not any((remote / "data").rglob("*.parquet"))
    raw = {name for name in expected if name.startswith(f"{spec.name}/raw/")}
    assert len(raw) == 8 and len(expected) >= 3 * 8  # raw, validated, features: every day
    assert _md5s(bucket) == expected


def _md5s(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }
