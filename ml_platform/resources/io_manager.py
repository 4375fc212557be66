"""One IO manager for every data product: `data/<pipeline>/<stage>/<partition>.parquet`.

Assets hand it `EncodedFrame`s (or `{partition: EncodedFrame}` for a range run) whose md5 they
already reported as the `DataVersion`; it writes exactly those bytes atomically. `base_dir` is a
folder, or a URL (`s3://bucket/prefix`, `ML_PLATFORM_DATA_ROOT`) read and written through fsspec
(`core.storage.data_path`).
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from ml_platform.core.storage import (
    DataPath,
    EncodedFrame,
    atomic_write,
    data_path,
    encode_frame,
    read_frame,
    read_frames,
    release_freed_memory,
)


class ParquetIOManager(dg.ConfigurableIOManager):
    """Partitioned parquet files under `base_dir` (a folder or a URL), written atomically."""

    base_dir: str

    def path_for(self, asset_key: dg.AssetKey, partition_key: str | None = None) -> DataPath:
        base = data_path(self.base_dir).joinpath(*asset_key.path)
        return base / f"{partition_key}.parquet" if partition_key else base.with_suffix(".parquet")

    def store(self, asset_key: dg.AssetKey, encoded: dict[str, EncodedFrame]) -> None:
        """Write partitions now, from the asset body, when something must follow the write
        (`features` upserts the online store only once its offline rows are on disk); the
        asset then returns `stored_output(...)`, which this manager does not write again."""
        for partition_key, frame in encoded.items():
            atomic_write(self.path_for(asset_key, partition_key), frame.payload)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:  # nothing to store, or already stored by `store`
            return
        key = context.asset_key
        if isinstance(obj, dict):
            for partition_key, encoded in obj.items():
                atomic_write(self.path_for(key, partition_key), _encoded(encoded).payload)
        else:
            partition = context.partition_key if context.has_asset_partitions else None
            atomic_write(self.path_for(key, partition), _encoded(obj).payload)
        release_freed_memory()  # the step's frames are gone: see release_freed_memory

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """One frame, or `{partition: frame}` when the input asks for `by_partition`; an input
        with `latest_partitions: N` gets only the newest N materialised partitions, and one with
        `allow_missing: True` gets an empty frame, not a failure, when none is materialised."""
        key, options = context.asset_key, context.definition_metadata or {}
        release_freed_memory()  # what earlier steps of this process freed, before this one loads
        if not context.has_asset_partitions:
            return _read(self.path_for(key), key)
        partitions = context.asset_partition_keys
        if options.get("by_partition"):
            return {p: _read(self.path_for(key, p), key) for p in partitions}
        allow_missing = bool(options.get("allow_missing"))
        if len(partitions) == 1 and not allow_missing:
            return _read(self.path_for(key, partitions[0]), key)
        paths = [self.path_for(key, p) for p in partitions]
        missing = [p.stem for p in paths if not p.exists()]
        if missing:
            context.log.info(
                f"{key.to_user_string()}: {len(missing)} of {len(paths)} upstream partitions "
                f"not materialised, read as absent (first: {missing[:3]})"
            )
        present = [p for p in paths if p.exists()]
        latest = options.get("latest_partitions")
        if latest:  # a consumer that needs only a recent window reads only that
            present = present[-int(latest) :]
        if not present and allow_missing:
            return pd.DataFrame()
        if not present:
            raise dg.Failure(
                f"no materialised partitions of {key.to_user_string()} in "
                f"{partitions[0]}..{partitions[-1]}: materialise it first"
            )
        return read_frames(present)


def _encoded(obj: object) -> EncodedFrame:
    if isinstance(obj, EncodedFrame):
        return obj
    if isinstance(obj, pd.DataFrame):
        return encode_frame(obj)
    raise TypeError(f"ParquetIOManager stores DataFrames, got {type(obj).__name__}")


def _read(path: DataPath, key: dg.AssetKey) -> pd.DataFrame:
    if not path.exists():
        raise dg.Failure(
            f"{key.to_user_string()} has no stored data at {path}: materialise it first"
        )
    return read_frame(path)


def stored_output(output: dg.Output) -> dg.Output:
    """The same output (version, metadata) without a value: its data was written by `store`."""
    return dg.Output(
        None,
        output_name=output.output_name,
        data_version=output.data_version,
        metadata=output.metadata,
    )
