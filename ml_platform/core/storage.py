"""Parquet encoding, content hashes and atomic writes shared by every data product.

The content hash is DVC's: the md5 of the file's bytes. Computing it where the bytes are produced
lets an asset return its `DataVersion` before the IO manager writes the same bytes.

Data products live under a root that is a local folder (plain `pathlib`, the fast path) or a URL
(`s3://bucket/prefix`, `gs://…`, `file:///…`, `memory://…`), reached through fsspec with
`universal_pathlib`'s `UPath`. Credentials come from each filesystem's usual environment variables
(`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, `GOOGLE_APPLICATION_CREDENTIALS`, …), never from config.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import pandas as pd

if TYPE_CHECKING:
    from upath import UPath

DataPath = Union[Path, "UPath"]
"""A data product's location: a local `Path`, or a `UPath` under a URL root."""

_LOCAL_PROTOCOLS = ("file", "local")


def data_path(root: str | Path) -> DataPath:
    """The root of the data products: a `Path` for a folder, a `UPath` for a URL.

    Only a string with a scheme (`s3://…`, `file:///…`) goes through fsspec, so the default
    (`<project>/data`) keeps plain pathlib and its speed. The fsspec filesystem for the scheme must
    be installed (`s3fs` for `s3://`, `gcsfs` for `gs://`); a missing one fails here, naming it.
    """
    text = str(root)
    if "://" not in text:
        return Path(text)
    import fsspec
    from upath import UPath

    try:
        path = UPath(text)
        fsspec.get_filesystem_class(path.protocol)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"data root {text!r} cannot be opened through fsspec: {exc}") from exc
    return path


def is_url_path(path: object) -> bool:
    """True for a `UPath` (fsspec) location, False for a plain local `Path`."""
    return not isinstance(path, Path)


@dataclass(frozen=True)
class EncodedFrame:
    """Parquet bytes, their md5 and the frame's shape, ready to be written as is.

    The frame itself is not kept: a 730-day backfill holds every partition's bytes until the IO
    manager writes them, and keeping the frames as well doubled peak memory.
    """

    payload: bytes
    md5: str
    rows: int
    dtypes: tuple[tuple[str, str], ...]


def encode_frame(frame: pd.DataFrame) -> EncodedFrame:
    """Serialise deterministically (same frame, same bytes) so hashes are reproducible."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    payload = buffer.getvalue()
    dtypes = tuple((str(c), str(t)) for c, t in frame.dtypes.items())
    return EncodedFrame(payload, hashlib.md5(payload).hexdigest(), len(frame), dtypes)


def md5_bytes(data: bytes) -> str:
    """DVC-compatible md5 of bytes already in memory (a landing file is read once)."""
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """DVC-compatible md5 of a file, streamed so large files do not load into memory."""
    digest = hashlib.md5()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def combined_md5(hashes: list[str]) -> str:
    """One version for a set of partitions, stable under ordering of the input."""
    return hashlib.md5("\n".join(sorted(hashes)).encode()).hexdigest()


def atomic_write(
    path: DataPath, payload: bytes, *, overwrite: bool = True, fsync: bool = True
) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file.

    The temp file's name starts with a dot, so folder scans (the landing sensor) skip it. With
    `overwrite=False` the temp file is hard-linked into place instead, which raises
    `FileExistsError` rather than replace a file that appeared in the meantime. `fsync=False`
    skips the flush to disk (a few milliseconds per file) for data that can be made again.
    A `UPath` goes through `_atomic_write_fsspec`.
    """
    if is_url_path(path):
        _atomic_write_fsspec(path, payload, overwrite=overwrite, fsync=fsync)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp_name, path)
        else:
            os.link(tmp_name, path)
            os.unlink(tmp_name)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _atomic_write_fsspec(path: UPath, payload: bytes, *, overwrite: bool, fsync: bool) -> None:
    """The same guarantee through fsspec. A local filesystem (`file://`) takes the temp file and
    rename above. Elsewhere one `pipe_file` is one PUT, which object stores (S3, GCS, Azure) apply
    atomically: a reader sees the old object or the new one, never a part. With `overwrite=False`
    an existing object is refused, but on an object store that check is not atomic with the PUT
    (fsspec has no compare-and-swap), which is one reason landing files stay on a local disk."""
    if path.protocol in _LOCAL_PROTOCOLS:
        atomic_write(Path(path.path), payload, overwrite=overwrite, fsync=fsync)
        return
    fs = path.fs
    if not overwrite and fs.exists(path.path):
        raise FileExistsError(str(path))
    fs.makedirs(path.parent.path, exist_ok=True)  # a no-op on object stores, needed on others
    fs.pipe_file(path.path, payload)


def read_frame(path: DataPath) -> pd.DataFrame:
    if is_url_path(path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(path.read_bytes())).to_pandas()
    return pd.read_parquet(path, engine="pyarrow")


def read_frames(paths: list[DataPath]) -> pd.DataFrame:
    """Many parquet files (a range of partitions) as one frame, converted by Arrow in one pass.

    The same frame as concatenating `read_frame` of each, but reading 730 daily partitions takes
    about 40 % less time and the frame holds about 55 MB less: concatenating kept every
    per-file frame and the result at once, and one conversion makes equal strings (a store id on
    every day) one object instead of one per row. Types are unified as `pd.concat` would (an empty
    partition's untyped column, an int column that is float elsewhere).
    """
    import pyarrow as pa

    if not paths:
        raise ValueError("read_frames needs at least one file")
    tables = [_read_table(path) for path in paths]
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    frame = table.to_pandas()
    del table
    pa.default_memory_pool().release_unused()  # the tables' buffers: see release_freed_memory
    return frame


def _read_table(path: DataPath):
    """One parquet file as an Arrow table; a `UPath` is fetched whole (one GET per object)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_url_path(path):
        return pq.read_table(pa.BufferReader(path.read_bytes()))
    return pq.read_table(path)


def release_freed_memory() -> None:
    """Give memory that large frames freed back to the OS, so the next step starts from less.

    Neither allocator does it on its own: glibc keeps freed heap pages for reuse, and Arrow keeps
    its own pool, which pandas and numpy (malloc) cannot reuse. A run executes every step in one
    process, so each step's peak used to stack on what the previous steps had freed. Cheap (a few
    milliseconds); a no-op where glibc's `malloc_trim` is not available.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
